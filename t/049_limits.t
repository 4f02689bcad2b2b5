# t/049_limits.t - KmdcMaxDocumentSize and KmdcMailboxQuota agree: a
# document of the largest allowed size fits an empty mailbox.
#
# The largest envelope of a document of s bytes is
#   40 (header) + 4 (kb_len) + 16432 (the largest keyblock) + payload_len(s),
#   payload_len(s) = s + 16 * max(1, ceil(s / 65536)),
# so the byte quota of a mailbox must be at least that for s =
# KmdcMaxDocumentSize.  This test starts its own httpd (as t/002_config.t
# does: same module, database and master key, logs in t/logs/049_limits/):
#  - with KmdcMaxDocumentSize 1M and a quota one byte below that bound, or
#    equal to 1M (the shape of limits that do not agree), httpd refuses to
#    start with a line that names both directives;
#  - with no limit directives at all (the defaults) it starts;
#  - with KmdcMaxDocumentSize 1M and exactly that bound as the quota, a
#    document of exactly 1 MiB into an empty mailbox is relayed and fetched
#    back identical, a second one while the first is pending is refused
#    (507 mailbox_full: the quota holds one), and a document of 1 MiB + 1 is
#    refused 413 too_large, spending the sender's counter, its receipt
#    repeating the 413 to a byte-identical retry.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use File::Spec ();
use LWP::UserAgent ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use KmdcClient qw(sql document path same slurp);
use KmdcIntake qw(:all);
use KmdcUtil qw(free_port);

for my $v (qw(KMDC_MODULE KMDC_CONNINFO KMDC_MASTER_KEY_FILE KMDC_BUILD PGHOST)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $MiB = 1 << 20;
sub payload_len { my ($s) = @_; my $c = int(($s + 65535) / 65536); $c = 1 if $c < 1; $s + 16 * $c }
my $bound = 40 + 4 + 16432 + payload_len($MiB);     # 1065308

my $httpd = $ENV{KMDC_HTTPD} || '/usr/sbin/apache2';
my $apxs = $ENV{KMDC_APXS} || 'apxs';
my $modules = qx{$apxs -q LIBEXECDIR 2>/dev/null} || '/usr/lib/apache2/modules';
chomp $modules;
my $root = File::Spec->rel2abs('t/logs/049_limits');
my %running;
my $ua = LWP::UserAgent->new(timeout => 5, keep_alive => 0);

remove_tree($root);
make_path($root);

# Start httpd in the foreground with the handler at /kmdc and $limits.
# Returns {started, pid, port, url, dir, exit, log}.
sub start_httpd {
    my ($case, $limits) = @_;
    my $dir = "$root/$case";
    make_path($dir);
    my $port = free_port();
    my $user = $> == 0 ? "User nobody\nGroup nogroup\n" : '';
    write_bytes("$dir/httpd.conf", <<"EOF");
ServerRoot "$dir"
Listen 127.0.0.1:$port
ServerName localhost
LoadModule mpm_event_module "$modules/mod_mpm_event.so"
LoadModule authz_core_module "$modules/mod_authz_core.so"
LoadModule kmdc_module "$ENV{KMDC_MODULE}"
${user}PidFile "$dir/httpd.pid"
ErrorLog "$dir/error_log"
LogLevel info
DefaultRuntimeDir "$dir"
StartServers 1
ServerLimit 1
ThreadsPerChild 8
MinSpareThreads 1
MaxSpareThreads 8
MaxRequestWorkers 8
KmdcDatabase "$ENV{KMDC_CONNINFO}"
KmdcMasterKey 1 "$ENV{KMDC_MASTER_KEY_FILE}"
KmdcDbPool 1 4
$limits
<Location /kmdc>
    SetHandler kmdc
</Location>
EOF
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>', "$dir/stderr" or POSIX::_exit(126);
        exec($httpd, '-d', $dir, '-f', "$dir/httpd.conf", '-DFOREGROUND') or POSIX::_exit(127);
    }
    $running{$pid} = 1;
    my %h = (pid => $pid, port => $port, dir => $dir, started => 0,
             url => "http://127.0.0.1:$port/kmdc");
    my $deadline = time + 20;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            $h{exit} = $?;
            last;
        }
        my $res = $ua->get("http://127.0.0.1:$port/");
        if (($res->header('Client-Warning') // '') ne 'Internal response') {
            $h{started} = 1;
            last;
        }
        sleep 0.1;
    }
    $h{log} = slurp("$dir/stderr") . slurp("$dir/error_log");
    return \%h;
}

sub stop_httpd {
    my ($h) = @_;
    my $pid = $h->{pid};
    return unless $pid && $running{$pid};
    kill 'TERM', $pid;
    my $deadline = time + 15;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            return;
        }
        sleep 0.1;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    delete $running{$pid};
}

END {
    for my $pid (keys %running) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
    }
}

# A configuration httpd must refuse, naming both directives on one line.
sub refused {
    my ($case, $limits, $name) = @_;
    subtest $name => sub {
        my $h = start_httpd($case, $limits);
        stop_httpd($h) if $h->{started};
        ok(!$h->{started} && defined $h->{exit} && $h->{exit} != 0, 'httpd refuses to start')
            or diag('exit: ' . ($h->{exit} // 'none (it started)'));
        my @lines = grep { /KmdcMailboxQuota/ && /KmdcMaxDocumentSize/ } split /\n/, $h->{log};
        ok(@lines, 'one line of its log names KmdcMailboxQuota and KmdcMaxDocumentSize')
            or diag("log:\n$h->{log}");
        done_testing();
    };
}

is($bound, 1065308, 'the bound for 1 MiB: 40 + 4 + 16432 + 1048576 + 16 x 16 bytes');

refused('quota-below', "KmdcMaxDocumentSize 1M\nKmdcMailboxQuota 1000 " . ($bound - 1),
        'a quota one byte below the largest envelope of KmdcMaxDocumentSize');
refused('quota-equal', "KmdcMaxDocumentSize 1M\nKmdcMailboxQuota 1000 1M",
        'a quota of the document size itself (1M and 1M)');

subtest 'the default limits agree' => sub {
    my $h = start_httpd('defaults', '');
    ok($h->{started}, 'httpd starts without KmdcMaxDocumentSize and KmdcMailboxQuota')
        or diag($h->{log});
    my $res = $h->{started} ? $ua->get("$h->{url}/health") : undef;
    is($res ? $res->code : 0, 200, 'it answers /health');
    stop_httpd($h);
    done_testing();
};

# LimitRequestBody (httpd's own, 1 GiB when unset) below the largest envelope
# is warned about at start-up, naming the location; the server still starts.
subtest 'a LimitRequestBody below the largest envelope is warned about' => sub {
    my $warned = sub {
        my ($h, $limit) = @_;
        return scalar grep { /LimitRequestBody \Q$limit\E for \/kmdc\/send is below/ }
            split /\n/, $h->{log};
    };
    my @cases = (
        [ 'lrb-default', '', 1073741824, 1,
          'no LimitRequestBody: httpd\'s 1 GiB is below the 1G document\'s envelope' ],
        [ 'lrb-unlimited', "LimitRequestBody 0", 0, 0, 'LimitRequestBody 0: no warning' ],
        [ 'lrb-below', "KmdcMaxDocumentSize 1M\nKmdcMailboxQuota 1000 $bound\n"
          . 'LimitRequestBody ' . ($bound - 1), $bound - 1, 1,
          'one byte below the largest envelope of 1M: warned' ],
        [ 'lrb-exact', "KmdcMaxDocumentSize 1M\nKmdcMailboxQuota 1000 $bound\n"
          . "LimitRequestBody $bound", $bound, 0, 'exactly the largest envelope of 1M: no warning' ],
    );
    for my $c (@cases) {
        my ($case, $limits, $limit, $want, $name) = @$c;
        my $h = start_httpd($case, $limits);
        ok($h->{started}, "$name (httpd starts)") or diag($h->{log});
        stop_httpd($h);
        is($warned->($h, $limit) ? 1 : 0, $want, $name) or diag("log:\n$h->{log}");
    }
    done_testing();
};

subtest 'the largest document fits an empty mailbox' => sub {
    my $h = start_httpd('exact', "KmdcMaxDocumentSize 1M\nKmdcMailboxQuota 1000 $bound");
    ok($h->{started}, "httpd starts with KmdcMaxDocumentSize 1M, KmdcMailboxQuota 1000 $bound")
        or diag($h->{log});
    SKIP: {
    skip 'httpd did not start', 10 unless $h->{started};
    my $url = $h->{url};
    my $alice = issue('lm-alice', url => $url);
    my $bob = issue('lm-bob', url => $url);

    my $doc = document(path('.doc'), $MiB, 'lm-1');
    my $res = post_envelope(seal($alice, 'lm-bob', $doc), url => $url);
    is($res->{code}, 201, 'a document of exactly 1 MiB into an empty mailbox: 201')
        or diag($res->{body});

    my $doc2 = document(path('.doc'), $MiB, 'lm-2');
    $res = post_envelope(seal($alice, 'lm-bob', $doc2), url => $url);
    is("$res->{code} " . ($res->{json} ? $res->{json}{error} // '' : ''), '507 mailbox_full',
       'a second one while the first is pending: 507 mailbox_full (the quota holds one)')
        or diag($res->{body});

    my ($rc, $d, $files, $out) = fetch_all($bob);
    ok($rc == 0 && @$files == 1 && same("$d/$files->[0]", $doc),
       'the recipient fetches the 1 MiB document byte for byte')
        or diag("exit $rc, files: @$files; $out");

    my $big = document(path('.doc'), $MiB + 1, 'lm-3');
    my $env = seal($alice, 'lm-bob', $big);
    my $seq = envelope_seq($env);
    my $up = up_next($alice);
    $res = post_envelope($env, url => $url);
    is("$res->{code} " . ($res->{json} ? $res->{json}{error} // '' : ''), '413 too_large',
       'a document of 1 MiB + 1 byte: 413 too_large') or diag($res->{body});
    is(up_next($alice), $seq + 1, 'its counter is spent: up_next moved past it');
    is(sql("SELECT http_status FROM receipts WHERE serial = x'$alice->{serial}'::bigint "
           . "AND seq = $seq"), 413, 'its receipt records 413');
    my $again = post_envelope($env, url => $url);
    is("$again->{code} " . ($again->{json} ? $again->{json}{error} // '' : ''), '413 too_large',
       'a byte-identical retry gets the 413 again') or diag($again->{body});
    is($again->{body}, $res->{body}, 'the retry\'s answer is the first one');
    is(up_next($alice), $seq + 1, 'the retry spends nothing more');
    is(sql("SELECT count(*) FROM deliveries WHERE recipient = x'$bob->{serial}'::bigint "
           . "AND state = 'queued'"), 0, 'nothing is pending for the recipient');
    diag("up_next was $up before the 1 MiB + 1 upload") if $up != $seq;
    }

    stop_httpd($h);
    done_testing();
};

done_testing();
