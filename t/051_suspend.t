# t/051_suspend.t - long-polls that hold no worker thread (event MPM), and
# database pools that shrink back after a burst.
#
# A separate httpd (event MPM, one child of 4 worker threads, KmdcDbPool 1 4,
# KmdcDbPoolIdle 2, AsyncRequestWorkerFactor 16) on its own database.  Checked:
# - 12 long-polls (three times the threads) wait at once, all suspended
#   (kmdc_longpoll_suspended), while /health and a listing still answer at
#   once; one delivery answers all 12 with 200 promptly, each with
#   "Connection: close"; the gauges go back to 0;
# - suspended polls that see no change answer 304 at their deadline, not
#   before;
# - a graceful stop (SIGWINCH) answers every suspended poll 304 at once and
#   httpd exits;
# - after a burst of concurrent requests the pool holds several connections;
#   2 s of idleness later it is back to its minimum (1) per child.
# About 15 s.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use Digest::SHA qw(sha256_hex hmac_sha256_hex);
use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp qw(tempdir);
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use KmdcCluster qw(:all);

for my $v (qw(KMDC_BUILD KMDC_MODULE KMDC_SRCDIR PGHOST PGPORT PGUSER)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $build = $ENV{KMDC_BUILD};
my $kmdc = "$build/kmdc/kmdc";
my $db = 'kmdc_suspend';
my $root = File::Spec->rel2abs('t/logs/051_suspend');
my $work = tempdir('kmdc-suspend-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $work;
remove_tree($root);
make_path($root);
chmod 0755, $root;

my $conninfo = create_db($db);
my $key = keygen("$work/master.key");
my $port = free_port();
my $base = "http://127.0.0.1:$port";
my $url = "$base/kmdc";
# The event MPM accepts at most ThreadsPerChild + idle threads x
# AsyncRequestWorkerFactor connections per child, suspended ones included
# (docs/SCALING.md): 4 + 4 x 16 = 68 here.
my $body = <<"EOF";
AsyncRequestWorkerFactor 16
KmdcDatabase "$conninfo"
KmdcMasterKey 1 "$key"
KmdcDbPool 1 4
KmdcDbPoolIdle 2
<Location /kmdc>
    SetHandler kmdc
</Location>
<Location /kmdc-metrics>
    SetHandler kmdc-metrics
</Location>
EOF
my $h = httpd_start(dir => $root, listen => ["127.0.0.1:$port"], servers => 1, threads => 4,
                    probe => "$url/health", body => $body);
ok($h->{started}, 'an httpd with one child of 4 worker threads (event MPM)')
    or diag($h->{log});
BAIL_OUT('httpd did not start') unless $h->{started};

# ---- cards ---------------------------------------------------------------------------

sub card {
    my ($addr) = @_;
    my $c = issue(db => $conninfo, keys => ["1:$key"], url => $url, address => $addr,
                  file => "$work/$addr.card");
    my ($rc, $out) = run($kmdc, '--card', $c->{file}, 'activate', $c->{code});
    die "activate $addr: $out" if $rc;
    # the request key after activation, from the plain card file
    open my $fh, '<:raw', $c->{file} or die;
    local $/;
    my $b = <$fh>;
    my $p = 48 + 8 + 2;
    $p += 2 + unpack('n', substr($b, $p, 2));        # address
    $p += 2 + unpack('n', substr($b, $p, 2));        # url
    $p += 32 + 8 + 32 + 8;                           # up and down chains
    $c->{ak} = substr($b, $p, 32);
    return $c;
}

my $alice = card('sp-alice');
my $bob = card('sp-bob');

my $nonce = 0;
sub auth {
    my ($c, $method, $target) = @_;
    my $ts = time;
    $ts = int($ts);
    my $n = sprintf('%016x%08x%08x', $$, $nonce++, int(rand(2**32)));
    my $msg = join("\n", 'KMDC/1 request', $method, $target, $ts, $n, sha256_hex(''));
    return "Authorization: KMDC1-HMAC-SHA256 serial=$c->{serial},ts=$ts,nonce=$n,sig="
        . hmac_sha256_hex($msg, $c->{ak});
}

sub mailbox { "/kmdc/mailbox/$_[0]{serial}" }

# GET a signed target: (code, body, headers).
sub signed_get {
    my ($c, $target, @h) = @_;
    my ($code, $b, undef, $hdr) = http_get("$base$target", '-H', auth($c, 'GET', $target),
                                           map { ('-H', $_) } @h);
    return ($code, $b, $hdr);
}

# Start a long-poll with curl in the background: {pid, out}.
sub start_poll {
    my ($c, $wait, $etag) = @_;
    my $target = mailbox($c) . "?wait=$wait";
    my $out = "$work/poll-" . int(rand(1e9));
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $t0 = time;
        my ($rc, $o) = run('curl', '-sS', '--max-time', '40', '-D', "$out.hdr", '-o', '/dev/null',
                           '-w', '%{http_code} %{time_total}', '-H', auth($c, 'GET', $target),
                           '-H', "If-None-Match: $etag", "$base$target");
        my ($code, $secs) = split ' ', $o // '';
        spew($out, sprintf("%s %.6f %.6f %s\n", $code || 0, $t0, time, $secs // -1));
        POSIX::_exit(0);
    }
    return { pid => $pid, out => $out };
}

sub poll_result {
    my ($p) = @_;
    waitpid($p->{pid}, 0);
    my ($code, $t0, $t1, $secs) = split ' ', slurp($p->{out});
    # secs: curl's own time for the request, without starting curl
    return { code => $code // 0, start => $t0 // 0, end => $t1 // 0, secs => $secs // -1,
             hdr => slurp("$p->{out}.hdr") };
}

sub metric {
    my ($name) = @_;
    my ($code, $b) = http_get("$base/kmdc-metrics");
    return undef unless $code == 200;
    my ($n) = $b =~ /^\Q$name\E (\d+)$/m;
    return $n;
}

sub until_metric {
    my ($name, $n, $secs) = @_;
    my $end = time + ($secs // 8);
    while (time < $end) {
        my $v = metric($name);
        return 1 if defined $v && $v == $n;
        sleep 0.1;
    }
    return 0;
}

sub etag_of {
    my ($c) = @_;
    my ($code, undef, $hdr) = signed_get($c, mailbox($c));
    my ($e) = $hdr =~ /^ETag:\s*(\S+)/mi;
    return $e;
}

# ---- more long-polls than threads ------------------------------------------------------

my $etag = etag_of($bob);
ok(defined $etag, "bob's mailbox has an ETag");
{
    my @p = map { start_poll($bob, 20, $etag) } 1 .. 12;
    ok(until_metric('kmdc_longpoll_suspended', 12), 'twelve long-polls wait, all suspended '
       . '(kmdc_longpoll_suspended 12, on 4 threads)');
    is(metric('kmdc_longpoll_waiting'), 12, '... kmdc_longpoll_waiting counts them too');
    my $t0 = time;
    my ($code) = http_get("$url/health");
    my $el = time - $t0;
    ok($code == 200 && $el < 1, sprintf('meanwhile /health answers at once (%d, %.3f s)',
                                        $code, $el));
    $t0 = time;
    ($code) = signed_get($bob, mailbox($bob));
    $el = time - $t0;
    ok($code == 200 && $el < 1, sprintf('... and so does a listing (%d, %.3f s)', $code, $el));
    spew("$work/doc1", "suspended long-poll document\n");
    my ($rc, $out) = run($kmdc, '--card', $alice->{file}, 'send', '--to', 'sp-bob', "$work/doc1");
    my $sent = time;
    is($rc, 0, 'a delivery to bob') or diag($out);
    my @r = map { poll_result($_) } @p;
    is(scalar(grep { $_->{code} == 200 } @r), 12, 'it answers all twelve: 200');
    my ($slowest) = sort { $b <=> $a } map { $_->{end} - $sent } @r;
    ok($slowest < 1.5, sprintf('... all within 1.5 s of the send (slowest %.3f s)', $slowest));
    is(scalar(grep { $_->{hdr} =~ /^Connection:\s*close/mi } @r), 12,
       '... each with Connection: close');
    ok(until_metric('kmdc_longpoll_waiting', 0, 3) && metric('kmdc_longpoll_suspended') == 0,
       '... and both gauges are back to 0');
}

# ---- the deadline ----------------------------------------------------------------------------

$etag = etag_of($bob);
{
    my @p = map { start_poll($bob, 2, $etag) } 1 .. 6;
    my @r = map { poll_result($_) } @p;
    is(scalar(grep { $_->{code} == 304 } @r), 6, 'six suspended polls without a change: 304');
    my ($fastest) = sort { $a <=> $b } map { $_->{secs} } @r;
    my ($slowest) = sort { $b <=> $a } map { $_->{secs} } @r;
    ok($fastest >= 1.8 && $slowest < 3.5,
       sprintf('... at their 2 s deadline (%.2f .. %.2f s, curl time_total)', $fastest, $slowest));
}

# ---- the pool shrinks back after a burst ---------------------------------------------------

sub backends {
    return sql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE datname = '$db' "
               . "AND application_name <> 'mod_kmdc listener' AND backend_type = 'client backend'");
}
{
    my @kids;
    for (1 .. 16) {
        my $pid = fork // die;
        if (!$pid) {
            signed_get($bob, mailbox($bob)) for 1 .. 5;
            POSIX::_exit(0);
        }
        push @kids, $pid;
    }
    waitpid($_, 0) for @kids;
    my $n = backends();
    ok($n > 1, "after a burst of 80 listings from 16 clients the pool holds $n connections");
    my $end = time + 6;
    sleep 0.2 while backends() > 1 && time < $end;
    is(backends(), 1, '... and 2 s of idleness later it is back to its minimum (KmdcDbPool 1 4, '
       . 'KmdcDbPoolIdle 2)');
    my ($code) = signed_get($bob, mailbox($bob));
    is($code, 200, '... and it still serves');
}

# ---- a graceful stop answers every suspended poll -----------------------------------------

$etag = etag_of($bob);
{
    my @p = map { start_poll($bob, 30, $etag) } 1 .. 6;
    ok(until_metric('kmdc_longpoll_suspended', 6), 'six polls suspended before a graceful stop');
    my $t0 = time;
    ok(kill('WINCH', $h->{pid}), 'graceful stop (SIGWINCH)');
    my @r = map { poll_result($_) } @p;
    my $el = time - $t0;
    is(scalar(grep { $_->{code} == 304 } @r), 6, '... answers all six: 304');
    ok($el < 5, sprintf('... at once (%.2f s)', $el));
    my $end = time + 10;
    my $gone = 0;
    while (time < $end) {
        if (waitpid($h->{pid}, WNOHANG) == $h->{pid}) {
            $gone = 1;
            last;
        }
        sleep 0.1;
    }
    ok($gone, sprintf('... and httpd exits (%.2f s)', time - $t0));
    my @bad = grep { /AH00052|Segmentation|AH00051|assert/i } split /\n/, slurp("$root/error_log");
    is(scalar(@bad), 0, 'no child crashed') or diag(join("\n", @bad));
}

done_testing();
