# t/050_longpoll.t - GET /mailbox/{serial}?wait=S woken by NOTIFY.
#
# Long-polls run in forked children (each its own connection and signature);
# deliveries are made with the real client (kmdc seal, then POST /send with
# curl) and acknowledgements with DELETE.  Checked: a poll with the current
# ETag answers within 1.5 s of a delivery; one with a stale ETag at once; one
# that sees no change 304 after S seconds (not before); wait=999 is clamped,
# not refused; a delivery to another card does not wake a poll; a mailbox
# nobody watches gets no NOTIFY, a watched one does; six polls
# at once hold no pooled connection (KmdcDbPool 1 4) and a normal request
# still answers promptly; one LISTEN connection per child, which comes back
# after the database killed it, and polls during the outage still answer.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(time sleep);
use KmdcTest qw(:all);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $mkey = $ENV{KMDC_MASTER_KEY_FILE} or die "KMDC_MASTER_KEY_FILE not set\n";
my $kmdcadm = "$build/admin/kmdcadm";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $dir = tempdir('kmdc-lp-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $dir;

# ---- helpers ----------------------------------------------------------------

# A sender card, issued and activated with the real client (its file is kept
# up to date by kmdc, so kmdc seal works with it).
sub client_card {
    my ($addr) = @_;
    my $file = "$dir/$addr.card";
    my ($rc, $out) = run($kmdcadm, '--master-key', "1:$mkey", 'issue', '--address', $addr,
                         '--url', $url, '--out', $file);
    die "kmdcadm issue $addr failed: $out" if $rc;
    my ($code) = $out =~ /access code:\s*([0-9A-Z-]+)/ or die "no code in: $out";
    ($rc, $out) = run($kmdc, '--card', $file, 'activate', $code);
    die "kmdc activate $addr failed ($rc): $out" if $rc;
    return { file => $file, address => $addr };
}

# A receiving card, activated in Perl (the test signs its requests).
sub perl_card {
    my ($addr) = @_;
    my $c = issue_card($addr);
    my $res = activate($c);
    die "activation of $addr failed: " . $res->as_string unless $res->code == 204;
    return $c;
}

my $n_doc = 0;
# Deliver a small document from $from to the addresses (kmdc seal, then POST
# with curl); returns the time the POST started.
sub deliver {
    my ($from, @to) = @_;
    $n_doc++;
    my $doc = "$dir/doc$n_doc";
    open my $fh, '>:raw', $doc or die;
    print $fh "long-poll document $n_doc\n";
    close $fh or die;
    my $env = "$dir/doc$n_doc.kmdc";
    my ($rc, $out) = run($kmdc, '--card', $from->{file}, 'seal', '--to', join(',', @to),
                         '-o', $env, $doc);
    die "kmdc seal failed ($rc): $out" if $rc;
    my $t = time;
    ($rc, $out) = run('curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}',
                      '-H', 'Content-Type: application/vnd.kmdc.envelope',
                      '--data-binary', "\@$env", "$url/send");
    die "POST /send failed: $out" unless $rc == 0 && $out eq '201';
    return $t;
}

sub mailbox { return "/kmdc/mailbox/$_[0]{serial}" }

# The current ETag and listing of a mailbox.
sub current {
    my ($card) = @_;
    my $res = signed($card, 'GET', mailbox($card));
    die 'listing failed: ' . $res->as_string unless $res->code == 200;
    return ($res->header('ETag'), body_json($res));
}

# Start a long-poll in a child process; poll_result() collects it.
sub start_poll {
    my ($card, $query, $etag) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        close $r;
        my $t0 = time;
        my $res = eval {
            signed($card, 'GET', mailbox($card) . $query,
                   headers => { 'If-None-Match' => $etag });
        };
        my $t1 = time;
        my $n = 0;
        if ($res && $res->code == 200) {
            my $b = body_json($res);
            $n = $b ? scalar @{ $b->{deliveries} // [] } : -1;
        }
        printf $w "%d %.6f %.6f %s %d\n", $res ? $res->code : 0, $t0, $t1,
            ($res ? $res->header('ETag') // '-' : '-'), $n;
        close $w;
        POSIX::_exit(0);    # no END blocks: the parent owns the TAP and the files
    }
    close $w;
    return { pid => $pid, fh => $r };
}

# {code, start, end, etag, n} of a long-poll started by start_poll.
sub poll_result {
    my ($p) = @_;
    my $fh = $p->{fh};
    my $line = <$fh> // '';
    close $fh;
    waitpid($p->{pid}, 0);
    my ($code, $t0, $t1, $etag, $n) = split ' ', $line;
    return { code => $code // 0, start => $t0 // 0, end => $t1 // 0,
             etag => $etag // '', n => $n // 0 };
}

# The long-polls in progress, from the metrics page (undef when unreadable).
sub waiting {
    my $res = request('GET', '/kmdc-metrics');
    return undef unless $res->code == 200;
    my ($n) = ($res->content // '') =~ /^kmdc_longpoll_waiting (\d+)$/m;
    return $n;
}

# Wait (at most 5 s) until at least n long-polls are waiting, so a delivery
# made next happens while they wait.  Returns 1 when they are.
sub until_waiting {
    my ($n) = @_;
    my $end = time + 5;
    while (time < $end) {
        my $w = waiting();
        return 1 if defined $w && $w >= $n;
        sleep 0.05;
    }
    return 0;
}

sub listeners {
    return sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
               . "'mod_kmdc listener'");
}

# ---- cards ----------------------------------------------------------------------

my $alice = client_card('lp-alice');
my $bob = perl_card('lp-bob');
my $carol = perl_card('lp-carol');

# ---- one LISTEN connection per child ----------------------------------------------
{
    # children connect their listener in the background: give them a moment
    my $end = time + 5;
    sleep 0.1 while listeners() < 1 && time < $end;
    my $n = listeners();
    ok($n >= 1, "LISTEN connections are open ($n, one per child)");
    my $q = sql("SELECT string_agg(DISTINCT query, ',') FROM pg_stat_activity "
                . "WHERE application_name = 'mod_kmdc listener'");
    like($q, qr/LISTEN kmdc_mailbox|SELECT 1/, 'they run LISTEN kmdc_mailbox');
}

# ---- a poll that sees no change ------------------------------------------------------
my ($etag) = current($bob);
{
    my $p = start_poll($bob, '?wait=2', $etag);
    my $r = poll_result($p);
    my $el = $r->{end} - $r->{start};
    is($r->{code}, 304, 'wait=2 with the current ETag: 304');
    ok($el >= 1.8, sprintf('... not before 1.8 s (%.2f s)', $el));
    ok($el < 4, sprintf('... and soon after 2 s (%.2f s)', $el));
    is($r->{etag}, $etag, '... with the same ETag');
}

# ---- a stale ETag answers at once -------------------------------------------------------
subtest 'a stale ETag answers at once' => sub {
    {
        my $t0 = time;
        my $res = signed($bob, 'GET', mailbox($bob) . '?wait=30',
                         headers => { 'If-None-Match' => '"00000000000000000000000000000000"' });
        my $el = time - $t0;
        is($res->code, 200, 'wait=30 with a stale ETag: 200');
        ok($el < 1, sprintf('... at once (%.2f s)', $el));
        is($res->header('ETag'), $etag, '... with the current ETag');
    }
};

# ---- a delivery wakes the poll ----------------------------------------------------------
subtest 'a delivery wakes the poll' => sub {
    {
        my $p = start_poll($bob, '?wait=20', $etag);
        ok(until_waiting(1), 'the poll is waiting (kmdc_longpoll_waiting >= 1)');
        sleep 0.2;
        my $sent = deliver($alice, 'lp-bob');
        my $r = poll_result($p);
        is($r->{code}, 200, 'a delivery wakes the poll: 200');
        my $lat = $r->{end} - $sent;
        ok($lat < 1.5, sprintf('... within 1.5 s of the POST (%.3f s)', $lat));
        isnt($r->{etag}, $etag, '... with a new ETag');
        is($r->{n}, 1, '... listing the delivery');
        $etag = $r->{etag};
    }
};

# ---- only a watched mailbox is notified ---------------------------------------------------
# A NOTIFY observer: psql LISTENs, sleeps, then prints what it received.
sub observe_start {
    my ($secs) = @_;
    open(my $fh, '-|', 'psql', '-X', '-At', '-c', 'LISTEN kmdc_mailbox',
         '-c', "SELECT pg_sleep($secs)") or die "psql: $!";
    return $fh;
}

# The payloads (serials in hex) the observer received.
sub observe_end {
    my ($fh) = @_;
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return $out =~ /with payload "([0-9a-f]+)"/g;
}

subtest 'only a watched mailbox is notified' => sub {
    my $watched = sub {
        my ($card, $more) = @_;
        return sql("SELECT count(*) FROM mailbox_watchers WHERE serial = "
                   . "x'$card->{serial}'::bigint" . ($more // ''));
    };
    current($carol);
    is($watched->($carol), 0, 'a listing without wait=S records no watcher');
    my $obs = observe_start(2);
    sleep 0.5;
    deliver($alice, 'lp-carol');
    my @got = observe_end($obs);
    ok(!(grep { $_ eq $carol->{serial} } @got),
       'a delivery to a mailbox nobody watches sends no NOTIFY') or diag("@got");

    my $p = start_poll($bob, '?wait=20', $etag);
    ok(until_waiting(1), "bob's long-poll is waiting");
    is($watched->($bob, " AND until > now() + interval '15 seconds'"), 1,
       "bob's mailbox is recorded as watched until past the poll's deadline");
    $obs = observe_start(2);
    sleep 0.5;
    deliver($alice, 'lp-bob');
    my $r = poll_result($p);
    @got = observe_end($obs);
    is($r->{code}, 200, "a delivery to bob wakes bob's long-poll");
    ok((grep { $_ eq $bob->{serial} } @got), "... with a NOTIFY for bob's serial")
        or diag("@got");
    $etag = $r->{etag};
};

# ---- the clamp: wait=999 is accepted, and waits ------------------------------------------
subtest 'the clamp: wait=999 is accepted, and waits' => sub {
    {
        my $res = signed($bob, 'GET', mailbox($bob) . '?wait=999',
                         headers => { 'If-None-Match' => '"00000000000000000000000000000000"' });
        is($res->code, 200, 'wait=999 is clamped, not refused (stale ETag: 200 at once)');
        is(signed($bob, 'GET', mailbox($bob) . '?wait=9999999999')->code, 400,
           'wait with ten digits: 400');
        my $p = start_poll($bob, '?wait=999', $etag);
        ok(until_waiting(1), 'wait=999 with the current ETag waits');
        sleep 0.2;
        my $sent = deliver($alice, 'lp-bob');
        my $r = poll_result($p);
        ok($r->{code} == 200 && $r->{end} - $sent < 1.5,
           sprintf('... until a delivery wakes it (%d after %.3f s)', $r->{code}, $r->{end} - $sent));
        $etag = $r->{etag};
        $p = start_poll($bob, '?wait=1', $etag);
        $r = poll_result($p);
        my $el = $r->{end} - $r->{start};
        ok($r->{code} == 304 && $el >= 0.8 && $el < 3,
           sprintf('wait=1: 304 after about a second (%.2f s)', $el));
    }
};

# ---- another card's delivery does not wake a poll -------------------------------------------
subtest 'another card\'s delivery does not wake a poll' => sub {
    {
        my ($etag_c) = current($carol);
        my $p = start_poll($carol, '?wait=2', $etag_c);
        ok(until_waiting(1), "carol's poll is waiting");
        deliver($alice, 'lp-bob');
        deliver($alice, 'lp-bob');
        my $r = poll_result($p);
        my $el = $r->{end} - $r->{start};
        is($r->{code}, 304, "deliveries to bob do not wake carol's poll: 304");
        ok($el >= 1.8, sprintf('... after its full 2 s (%.2f s)', $el));
        ($etag) = current($bob);
    }
};

# ---- an acknowledgement wakes the poll too -------------------------------------------------------
subtest 'an acknowledgement wakes the poll too' => sub {
    {
        my (undef, $list) = current($bob);
        my $id = $list->{deliveries}[0]{id};
        my $p = start_poll($bob, '?wait=20', $etag);
        ok(until_waiting(1), 'a poll waits for an acknowledgement');
        sleep 0.2;
        my $t = time;
        my $res = signed($bob, 'DELETE', mailbox($bob) . "/$id");
        my $acked = time;
        is($res->code, 204, 'DELETE of a delivery: 204');
        my $r = poll_result($p);
        ok($r->{code} == 200 && $r->{end} - $acked < 1.5,
           sprintf('... wakes the poll (%d after %.3f s)', $r->{code}, $r->{end} - $acked));
        $etag = $r->{etag};
    }
};

# ---- six polls hold no pooled connection ---------------------------------------------------------
subtest 'six polls hold no pooled connection' => sub {
    {
        my @p = map { start_poll($bob, '?wait=20', $etag) } 1 .. 6;
        ok(until_waiting(6), 'six long-polls wait at once (KmdcDbPool 1 4)');
        my $t0 = time;
        my $res = signed($bob, 'GET', "/kmdc/card/$bob->{serial}");
        my $el = time - $t0;
        is($res->code, 200, 'meanwhile GET /card answers 200');
        ok($el < 1, sprintf('... promptly (%.3f s)', $el));
        $t0 = time;
        $res = signed($bob, 'GET', mailbox($bob));
        $el = time - $t0;
        ok($res->code == 200 && $el < 1, sprintf('... and so does a listing (%.3f s)', $el));
        my $sent = deliver($alice, 'lp-bob');
        my @r = map { poll_result($_) } @p;
        is(scalar(grep { $_->{code} == 200 } @r), 6, 'one delivery wakes all six: 200');
        my ($slowest) = sort { $b <=> $a } map { $_->{end} - $sent } @r;
        ok($slowest < 1.5, sprintf('... all within 1.5 s (slowest %.3f s)', $slowest));
        $etag = $r[0]{etag};
        my $end = time + 3;
        sleep 0.05 while (waiting() // -1) != 0 && time < $end;
        is(waiting(), 0, 'kmdc_longpoll_waiting is back to 0');
    }
};

# ---- the listener comes back after the database dropped it -------------------------------------
subtest 'the listener comes back after the database dropped it' => sub {
    {
        my $n0 = listeners();
        my $p = start_poll($bob, '?wait=4', $etag);
        ok(until_waiting(1), 'a poll waits while the listeners are killed');
        my $killed = sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         . "WHERE application_name = 'mod_kmdc listener'");
        ok($killed >= 1, "pg_terminate_backend on the $killed listener connection(s)");
        my $sent = deliver($alice, 'lp-bob');
        my $r = poll_result($p);
        ok($r->{code} == 200 && $r->{end} - $r->{start} < 4.5,
           sprintf('the poll still sees the delivery (%d after %.2f s of its 4 s)', $r->{code},
                   $r->{end} - $r->{start}));
        $etag = $r->{etag};
        my $end = time + 8;
        sleep 0.1 while listeners() < $n0 && time < $end;
        ok(listeners() >= $n0, "the $n0 listener connection(s) reconnected");
        $p = start_poll($bob, '?wait=20', $etag);
        ok(until_waiting(1), 'a new poll waits');
        sleep 0.2;
        $sent = deliver($alice, 'lp-bob');
        $r = poll_result($p);
        ok($r->{code} == 200 && $r->{end} - $sent < 1.5,
           sprintf('... and a delivery wakes it again (%d after %.3f s)', $r->{code},
                   $r->{end} - $sent));
        $etag = $r->{etag};
    }
};

# ---- a graceful restart answers waiting polls at once --------------------------------------------
subtest 'a graceful restart answers waiting polls at once' => sub {
    {
        my $pidfile = "$FindBin::Bin/logs/httpd.pid";
        open my $fh, '<', $pidfile or die "$pidfile: $!";
        my $httpd = <$fh> // '';
        close $fh;
        chomp $httpd;
        my $p = start_poll($bob, '?wait=30', $etag);
        ok(until_waiting(1), 'a poll waits before a graceful restart');
        my $t0 = time;
        ok(kill('USR1', $httpd), "graceful restart (SIGUSR1 to httpd $httpd)");
        my $r = poll_result($p);
        my $el = time - $t0;
        ok($r->{code} == 304 && $el < 10,
           sprintf('... the stopping child answers the poll at once: %d after %.2f s', $r->{code}, $el));
        my $end = time + 10;
        my $res;
        do { sleep 0.2; $res = request('GET', '/kmdc/health') } until $res->code == 200 || time > $end;
        is($res->code, 200, '... and the server answers after the restart');
        $end = time + 10;
        sleep 0.2 while listeners() < 1 && time < $end;
        ok(listeners() >= 1, '... with its listeners');
    }
};

done_testing();
