# t/115_client_once.t - exactly-once in the user's hands: the real kmdc
# against the real httpd and PostgreSQL of t/run-suite.
#
#  1. the same `kmdc send` run again after a failure at each step delivers
#     one copy: the datacenter down (nothing listening), the connection cut
#     in the middle of the upload (a relay that drops it after 1 MiB), the
#     client killed after the datacenter committed (KMDC_CRASH_AT, test
#     builds); `--again` is how a second copy is sent on purpose; `kmdc
#     outbox` lists the waiting entries with their files, `kmdc outbox send`
#     sends only them;
#  2. a wrong URL (Apache's HTML 404) with an entry queued keeps both
#     entries and exits 8 (configuration), and the right URL then sends both
#     once;
#  3. `kmdc watch` across five killed httpd children and a restart of httpd
#     (SIGHUP): it never exits, never gets a 401 for a replayed nonce, and
#     fetches every document;
#  4. --json, --version, KMDC_URL, the first-run message, "did you mean",
#     an unknown recipient named, https against the http port (exit 8).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Cwd qw(realpath);
use IO::Select;
use IO::Socket::INET;
use JSON::PP ();
use KmdcClient qw(:all);
use POSIX ();
use Time::HiRes qw(time sleep);

my $t_start = time;
my $kmdc = kmdc_bin();
my $json = JSON::PP->new;
my $p = "c115-$$";
my $alice = card("$p-alice");
my $bob = card("$p-bob");
my $carol = card("$p-carol");

my ($port) = base_url() =~ m{^http://127\.0\.0\.1:(\d+)/} or die 'unexpected KMDC_URL ' . base_url();
my $path = url_path();

# A port where nothing listens: the datacenter is down.
my $dead = do {
    my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1', LocalPort => 0)
        or die "socket: $!";
    my $n = $s->sockport;
    close $s;
    "http://127.0.0.1:$n$path";
};

sub k {
    my ($card, @args) = @_;
    my %o = ref $args[0] eq 'HASH' ? %{ shift @args } : ();
    return run({ env => $o{env} }, $kmdc, '--card', $card->{file}, @args);
}
sub ksend {
    my ($card, $to, $doc, @pre) = @_;
    return k($card, @pre, 'send', '--to', $to->{addr}, $doc);
}
sub dlv_count {
    my ($card) = @_;
    return sql("SELECT count(*) FROM deliveries WHERE recipient = x'$card->{serial}'::bigint");
}
sub fetch_names {
    my ($card) = @_;
    my $d = newdir();
    my $r = run({}, $kmdc, '--card', $card->{file}, '-q', 'fetch', '-d', $d);
    my @f = files_in($d);
    return ($r, $d, @f);
}

# A relay to the test server that cuts the connection once the client sent
# more than $limit bytes.  Returns (pid, port).
sub cutting_relay {
    my ($limit) = @_;
    my $srv = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0,
                                    ReuseAddr => 1) or die "relay: $!";
    my $rport = $srv->sockport;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        while (my $c = $srv->accept) {
            my $u = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port) or last;
            my $sel = IO::Select->new($c, $u);
            my $n = 0;
          LOOP: while (1) {
                for my $fh ($sel->can_read(30)) {
                    my $r = sysread($fh, my $buf, 65536);
                    last LOOP unless $r;
                    if ($fh == $c) {
                        $n += $r;
                        last LOOP if $n > $limit;
                        syswrite($u, $buf) // last LOOP;
                    } else {
                        syswrite($c, $buf) // last LOOP;
                    }
                }
            }
            close $c;
            close $u;
        }
        POSIX::_exit(0);
    }
    close $srv;
    return ($pid, $rport);
}

# ---- 1. the same send again ------------------------------------------------------------
subtest '1. the same send again' => sub {
    # the datacenter down
    {
        my $doc = document(path('.a'), 200_000, 'down');
        my $d0 = dlv_count($bob);
        my $r1 = ksend($alice, $bob, $doc, '--url', $dead);
        ok($r1->{rc} == 6 && card_info($alice)->{outbox} == 1,
           'down: kmdc send exits 6 and keeps the envelope in the outbox') or diag(explain_run($r1));
        my $up = card_info($alice)->{up_next};
        my $r2 = ksend($alice, $bob, $doc);
        ok($r2->{rc} == 0 && $r2->{out} =~ /^[0-9a-f]{16} 1 \Q$doc\E\n\z/,
           'down: the same kmdc send again exits 0 with one line for the document')
            or diag(explain_run($r2));
        like($r2->{err}, qr/resuming outbox entry/, 'down: ... and says it resumes the outbox entry');
        ok(dlv_count($bob) - $d0 == 1 && card_info($alice)->{up_next} == $up
           && card_info($alice)->{outbox} == 0,
           'down: exactly one delivery; no counter used by the second run; the outbox is empty')
            or diag('deliveries +' . (dlv_count($bob) - $d0));
    }

    # the connection cut in the middle of the upload
    {
        my $doc = document(path('.b'), 8 << 20, 'cut');
        my $d0 = dlv_count($bob);
        my ($rpid, $rport) = cutting_relay(1 << 20);
        my $r1 = ksend($alice, $bob, $doc, '--url', "http://127.0.0.1:$rport$path");
        kill 'KILL', $rpid;
        waitpid($rpid, 0);
        ok($r1->{rc} == 6 && card_info($alice)->{outbox} == 1,
           'cut: the upload cut after 1 MiB exits 6 and keeps the envelope') or diag(explain_run($r1));
        my $r2 = ksend($alice, $bob, $doc);
        ok($r2->{rc} == 0 && $r2->{out} =~ /^[0-9a-f]{16} 1 \Q$doc\E\n\z/,
           'cut: the same kmdc send again exits 0, one line') or diag(explain_run($r2));
        is(dlv_count($bob) - $d0, 1, 'cut: exactly one delivery');
    }

    # killed after the datacenter committed
    SKIP: {
        skip('needs a build with --enable-test-hooks (KMDC_CRASH_AT)', 4) unless has_test_hooks();
        my $doc = document(path('.c'), 100_000, 'killed');
        my $d0 = dlv_count($bob);
        my $r1 = ksend($alice, $bob, $doc, { env => { KMDC_CRASH_AT => 'send:after-upload' } });
        is($r1->{sig}, 9, 'killed: kmdc send killed by SIGKILL after the datacenter answered')
            or diag(explain_run($r1));
        my $r2 = ksend($alice, $bob, $doc);
        my ($id) = $r2->{out} =~ /^([0-9a-f]{16}) 1 \Q$doc\E$/m;
        ok($r2->{rc} == 0 && $id, 'killed: the same kmdc send again exits 0 and prints the message')
            or diag(explain_run($r2));
        is(dlv_count($bob) - $d0, 1, 'killed: exactly one delivery (answered from the receipt)');
        is(sql("SELECT count(*) FROM deliveries WHERE message_id = x'" . ($id // '0')
               . "'::bigint"), 1, 'killed: the printed message is the one delivered');
    }

    # the recipient has each document once
    {
        my ($r, $d, @f) = fetch_names($bob);
        my %seen;
        $seen{ s/ \(\d+\)//r }++ for @f;
        ok($r->{rc} == 0 && !grep({ $_ > 1 } values %seen) && !grep({ / \(\d+\)/ } @f),
           'the recipient fetches each document once (no "name (1)" copies)') or diag("files: @f");
    }

    # a second copy on purpose, the outbox listing, sending only the outbox
    {
        my $doc = document(path('.d'), 50_000, 'again');
        my $d0 = dlv_count($bob);
        my $r = ksend($alice, $bob, $doc, '--url', $dead);
        my $r2 = k($alice, 'send', '--again', '--to', $bob->{addr}, $doc);
        my @lines = split /\n/, $r2->{out};
        ok($r->{rc} == 6 && $r2->{rc} == 0 && @lines == 2 && dlv_count($bob) - $d0 == 2,
           '--again: the pending entry and a second copy are both sent') or diag(explain_run($r2));

        my $e = document(path('.e'), 30_000, 'listed');
        $r = ksend($alice, $bob, $e, '--url', $dead);
        my $l = k($alice, 'outbox');
        my $real = realpath($e);
        ok($l->{rc} == 0 && $l->{out} =~ /^[0-9a-f]{16}\t\S+\t30000\t\Q$bob->{addr}\E\t\S+\t\Q$real\E$/m,
           'kmdc outbox lists the waiting entry: sealed, size, recipient, NAME, file')
            or diag(explain_run($l));
        my $lj = k($alice, '--json', 'outbox');
        my $jj = eval { $json->decode($lj->{out}) };
        ok($jj && @{ $jj->{pending} } == 1 && $jj->{pending}[0]{file} eq $real
           && $jj->{pending}[0]{to}[0] eq $bob->{addr}, 'kmdc --json outbox: the same as JSON')
            or diag(explain_run($lj));
        my $up = card_info($alice)->{up_next};
        $d0 = dlv_count($bob);
        my $s = k($alice, 'outbox', 'send');
        ok($s->{rc} == 0 && $s->{out} =~ /^[0-9a-f]{16} 1 outbox:[0-9a-f]{16}\n\z/
           && dlv_count($bob) - $d0 == 1 && card_info($alice)->{up_next} == $up
           && card_info($alice)->{outbox} == 0,
           'kmdc outbox send: sends the entry, seals nothing new, empties the outbox')
            or diag(explain_run($s));
        $s = k($alice, 'send', '--outbox');
        ok($s->{rc} == 0 && $s->{out} eq '', 'kmdc send --outbox with an empty outbox: exit 0, nothing')
            or diag(explain_run($s));
    }
};

# ---- 2. a wrong URL keeps what is queued ------------------------------------------------------
subtest '2. a wrong URL keeps what is queued' => sub {
    {
        my $f = document(path('.f'), 40_000, 'queued');
        my $g = document(path('.g'), 40_000, 'wrong-url');
        my $d0 = dlv_count($bob);
        my $r = ksend($alice, $bob, $f, '--url', $dead);
        my $w = ksend($alice, $bob, $g, '--url', base_url() =~ s{/kmdc$}{/nokmdc}r);
        my $ci = card_info($alice);
        ok($r->{rc} == 6 && $w->{rc} == 8 && $ci->{outbox} == 2,
           'wrong URL: Apache\'s HTML 404 exits 8 (configuration) and both entries stay')
            or diag(explain_run($w) . "; outbox $ci->{outbox}");
        like($w->{err}, qr/404.*not a KMDC datacenter's answer.*URL/s,
             'wrong URL: ... and says the answer is not the datacenter\'s, check the URL');
        my $s = ksend($alice, $bob, $g);
        my @lines = split /\n/, $s->{out};
        ok($s->{rc} == 0 && @lines == 2 && $lines[0] =~ / outbox:[0-9a-f]{16}$/
           && $lines[1] =~ / \Q$g\E$/ && dlv_count($bob) - $d0 == 2 && card_info($alice)->{outbox} == 0,
           'wrong URL: the right URL then sends the queued entry and the resumed one, once each')
            or diag(explain_run($s));
        my $redir = k($alice, '--url', "http://127.0.0.1:$port", 'status', '0000000000000001');
        ok($redir->{rc} == 8, 'an answer that is not the datacenter\'s is not '
           . 'taken for one (status against the server root)') or diag(explain_run($redir));
    }
};

# ---- 3. watch across killed httpd children and a restart -----------------------------------

sub httpd_pid {
    my $src = $ENV{KMDC_SRCDIR} // '.';
    my ($pid) = slurp("$src/t/logs/httpd.pid") =~ /(\d+)/;
    return $pid;
}
sub httpd_children {
    my $pp = httpd_pid() // return ();
    my @c;
    opendir my $dh, '/proc' or return ();
    for my $q (grep { /^\d+$/ } readdir $dh) {
        my ($ppid) = slurp("/proc/$q/status") =~ /^PPid:\s*(\d+)/m or next;
        push @c, $q if $ppid == $pp;
    }
    closedir $dh;
    return @c;
}

{
    my $dir = newdir();
    my $h = start({}, $kmdc, '--card', $carol->{file}, 'watch', '-d', $dir);
    my $all = 1;
    my @docs;
    for my $i (1 .. 6) {
        my $doc = document(path(".w$i"), 20_000 + $i, "watch-$i");
        push @docs, $doc;
        my $r = k($alice, '-q', 'send', '--to', $carol->{addr}, '--name', "w$i.bin", $doc);
        my $got = wait_until(20, sub { -e "$dir/w$i.bin" || !is_running($h) });
        $all &&= $r->{rc} == 0 && $got && is_running($h);
        last unless $all;
        sleep 0.3;         # the watch is back in its long poll, on a reused connection
        if ($i <= 5) {
            my @kids = httpd_children();
            kill 'KILL', @kids;
            wait_until(10, sub { my %old = map { $_ => 1 } @kids;
                                 grep { !$old{$_} } httpd_children() });
        } elsif (my $pp = httpd_pid()) {
            kill 'HUP', $pp;      # a restart of the datacenter
            sleep 1;
        }
    }
    ok($all, 'watch: six documents arrive while five httpd children are killed, one at a time, '
       . 'during its long poll');
    my $last = document(path('.w7'), 7777, 'watch-7');
    push @docs, $last;
    my $r = k($alice, '-q', 'send', '--to', $carol->{addr}, '--name', 'w7.bin', $last);
    ok($r->{rc} == 0 && wait_until(30, sub { -e "$dir/w7.bin" }) && is_running($h),
       'watch: after a restart of httpd (SIGHUP) it still fetches') or diag(explain_run($r));
    ok(is_running($h), 'watch: it never exited');
    kill 'TERM', $h->{pid};
    my $w = finish($h);
    is($w->{rc}, 0, 'watch: exits 0 on SIGTERM') or diag(explain_run($w));
    unlike($w->{err}, qr/\b401\b|unauthori[sz]ed/, 'watch: no 401 (no replayed nonce) on the way')
        or diag($w->{err});
    my @f = files_in($dir);
    ok("@f" eq 'w1.bin w2.bin w3.bin w4.bin w5.bin w6.bin w7.bin'
       && !grep({ !same("$dir/w$_.bin", $docs[$_ - 1]) } 1 .. 7),
       'watch: every document once, byte for byte; nothing missed') or diag("files: @f");
}

# ---- 4. --json, --version, environment, messages ---------------------------------------------
subtest '4. --json, --version, environment, messages' => sub {
    {
        my $doc = document(path('.j'), 1234, 'json');
        my $r = k($alice, '--json', 'send', '--to', $bob->{addr}, $doc);
        my $j = eval { $json->decode($r->{out}) };
        ok($r->{rc} == 0 && $j && $j->{exit} == 0 && @{ $j->{results} } == 1
           && $j->{results}[0]{state} eq 'sent' && $j->{results}[0]{message} =~ /^[0-9a-f]{16}$/
           && $j->{results}[0]{deliveries} == 1, 'send --json: one JSON document with the message')
            or diag(explain_run($r));
        my $msg = $j ? $j->{results}[0]{message} : '0';
        my $d = newdir();
        $r = k($bob, '--json', 'fetch', '-d', $d);
        $j = eval { $json->decode($r->{out}) };
        ok($r->{rc} == 0 && $j && @{ $j->{written} } >= 1
           && grep({ $_->{path} =~ m{/\Q@{[ (split m{/}, $doc)[-1] ]}\E$} } @{ $j->{written} }),
           'fetch --json: the files written, as JSON') or diag(explain_run($r));
        $r = k($alice, '--json', 'status', $msg);
        $j = eval { $json->decode($r->{out}) };
        ok($r->{rc} == 0 && $j && $j->{message} eq $msg && $j->{recipients}[0]{address} eq $bob->{addr}
           && $j->{recipients}[0]{state} eq 'delivered', 'status --json: each recipient\'s state')
            or diag(explain_run($r));
        $r = k($alice, '--json', 'card');
        $j = eval { $json->decode($r->{out}) };
        ok($r->{rc} == 0 && $j && $j->{serial} eq $alice->{serial} && $j->{state} eq 'active'
           && $j->{outbox} == 0, 'card --json: the card as JSON') or diag(explain_run($r));
        $r = k($alice, '--json', 'sign', 'GET', '/x');
        is($r->{rc}, 2, '--json with a command that has no JSON output is a usage error');
    }
    {
        my $r = run({}, $kmdc, '--version');
        my $r2 = run({}, kmdcadm_bin(), '--version');
        ok($r->{rc} == 0 && $r->{out} =~ /^kmdc \d+\.\d+/ && $r2->{rc} == 0
           && $r2->{out} =~ /^kmdcadm \d+\.\d+/, 'kmdc --version and kmdcadm --version')
            or diag(explain_run($r) . ' / ' . explain_run($r2));
        $r = run({}, $kmdc, 'sned');
        ok($r->{rc} == 2 && $r->{err} =~ /did you mean 'send'/, 'kmdc sned: did you mean \'send\'?')
            or diag(explain_run($r));
        my $home = newdir();
        $r = run({ env => { HOME => $home, KMDC_CARD => undef } }, $kmdc, 'fetch');
        ok($r->{rc} == 7 && $r->{err} =~ /no card at \Q$home\E\/\.kmdc\/card yet.*kmdcadm issue.*kmdc activate/s
           && $r->{err} !~ /lock/, 'first run: no card is said as such, with what to do (exit 7)')
            or diag(explain_run($r));
        $r = run({ env => { HOME => $home, KMDC_CARD => undef } }, $kmdc, 'send', '--help');
        is($r->{rc}, 0, 'first run: help works without a card');
    }
    {
        my $doc = document(path('.u'), 1000, 'unknown');
        my $r = k($alice, 'send', '--to', "$bob->{addr},nobody-$$", $doc);
        ok($r->{rc} == 4 && $r->{err} =~ /'nobody-$$'/, 'an unknown recipient is named in the error')
            or diag(explain_run($r));
        is(card_info($alice)->{outbox}, 0, '... and the refusal (final) ended the entry');
    }
    {
        # KMDC_URL stands for --url; https against the http port is a TLS mismatch
        my $doc = document(path('.t'), 1000, 'tls');
        my $r = k($alice, { env => { KMDC_URL => "https://127.0.0.1:$port$path" } }, 'send', '--to',
                  $bob->{addr}, $doc);
        ok($r->{rc} == 8 && $r->{err} =~ /TLS mismatch/, 'KMDC_URL=https://... on the http port: '
           . 'said as a TLS mismatch, exit 8 (configuration)') or diag(explain_run($r));
        $r = k($alice, { env => { KMDC_URL => $dead } }, 'send', '--to', $bob->{addr}, $doc);
        is($r->{rc}, 6, 'KMDC_URL is used for --url (a dead one: exit 6)');
        $r = k($alice, 'send', '--to', $bob->{addr}, $doc);
        ok($r->{rc} == 0 && $r->{out} =~ /^[0-9a-f]{16} 1 /m && card_info($alice)->{outbox} == 0,
           'and without it the card\'s URL: the entry is resumed and sent') or diag(explain_run($r));
        $r = k($alice, { env => { KMDC_CACERT => '/nonexistent/ca.pem',
                                  KMDC_URL => "https://127.0.0.1:$port$path" } }, 'card', '--resync');
        is($r->{rc}, 8, 'KMDC_CACERT is used for --cacert (a missing file: configuration, exit 8)');
    }
};

diag(sprintf('t/115_client_once.t ran in %.0f s', time - $t_start));

done_testing();
