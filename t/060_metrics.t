# t/060_metrics.t - the kmdc-metrics handler (<Location /kmdc-metrics> in
# t/conf/extra.conf.in): Prometheus text format 0.0.4, counters shared by all
# children.
#
# The page is read, then the test does a known set of things (activations
# that succeed, fail and hit a locked card; sends that are accepted,
# retried, refused after authentication and rejected before it; requests
# that fail authentication; requests to each endpoint, paths with a malformed
# serial or id, a long-poll), reads it again, and checks that every sample
# moved by exactly what the test did and no other sample moved.  Every line must be a comment or `name{labels}
# value`; reads over separate connections (likely different children) give
# the same numbers.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use File::Temp qw(tempdir);
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(time sleep);
use KmdcTest qw(:all);
use KmdcUtil qw(slurp spew);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $mkey = $ENV{KMDC_MASTER_KEY_FILE} or die "KMDC_MASTER_KEY_FILE not set\n";
my $kmdcadm = "$build/admin/kmdcadm";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $metrics_url = Apache::TestRequest::resolve_url('/kmdc-metrics');
my $dir = tempdir('kmdc-mx-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $dir;

# ---- helpers ----------------------------------------------------------------

# The page through a new connection (curl): (status, content type, body).
sub page {
    my ($method) = @_;
    my $out = "$dir/page.out";
    my $hdr = "$dir/page.hdr";
    my ($rc, $code) = run('curl', '-sS', '-o', $out, '-D', $hdr, '-w', '%{http_code}',
                          '-X', $method // 'GET', $metrics_url);
    die "curl failed: $code" if $rc;
    open my $fh, '<:raw', $out or die;
    local $/;
    my $body = <$fh> // '';
    close $fh;
    open $fh, '<', $hdr or die;
    my $h = <$fh> // '';
    close $fh;
    return ($code + 0, $h, $body);
}

# Parse the text format: {samples => {"name{labels}" => value}, types =>
# {name => type}, bad => [lines that are neither]}.
sub parse {
    my ($text) = @_;
    my (%samples, %types, @bad);
    my $label = qr/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"/;
    for my $line (split /\n/, $text) {
        if ($line =~ /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$/) {
            next;
        }
        if ($line =~ /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/) {
            $types{$1} = $2;
            next;
        }
        if ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{$label(?:,$label)*\})? (-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)$/) {
            my ($name, $labels, $v) = ($1, $2 // '', $3);
            (my $base = $name) =~ s/_(?:bucket|sum|count)$//;
            push @bad, "no TYPE before: $line"
                unless $types{$name} || ($types{$base} // '') eq 'histogram';
            push @bad, "twice: $line" if exists $samples{"$name$labels"};
            $samples{"$name$labels"} = $v;
            next;
        }
        push @bad, $line;
    }
    return { samples => \%samples, types => \%types, bad => \@bad };
}

sub snapshot {
    my ($code, $h, $body) = page();
    die "the metrics page answered $code" unless $code == 200;
    return parse($body)->{samples};
}

# The endpoints of kmdc_requests_total.
my @endpoints = qw(page health send activate card mailbox_list mailbox_fetch mailbox_ack
                   messages other unknown);

# A reading as counters per endpoint: kmdc_requests_total{endpoint=X,code=Y}
# summed into kmdc_requests_total{endpoint=X} (every endpoint, 0 when none),
# without the histogram and the gauges (checked on their own).
sub collapse {
    my ($raw) = @_;
    my %c = map { ("kmdc_requests_total{endpoint=\"$_\"}" => 0) } @endpoints;
    for my $k (keys %$raw) {
        if ($k =~ /^kmdc_requests_total\{endpoint="([a-z_]+)",code="\d+"\}$/) {
            $c{"kmdc_requests_total{endpoint=\"$1\"}"} += $raw->{$k};
        }
        elsif ($k !~ /^kmdc_request_duration_seconds_|^kmdc_db_pool_|^kmdc_uploads_in_flight$|^kmdc_build_info\{/) {
            $c{$k} = $raw->{$k};
        }
    }
    return \%c;
}

# The delta of kmdc_requests_total{endpoint=ep,code=...} between two raw
# readings, as "code:n ..." (sorted, nonzero only).
sub code_deltas {
    my ($a, $b, $ep) = @_;
    my %d;
    for my $k (keys %$b) {
        next unless $k =~ /^kmdc_requests_total\{endpoint="\Q$ep\E",code="(\d+)"\}$/;
        my $n = $b->{$k} - ($a->{$k} // 0);
        $d{$1} = $n if $n;
    }
    return join ' ', map { "$_:$d{$_}" } sort keys %d;
}

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

my $n_env = 0;
sub seal {
    my ($from, $to, $bytes) = @_;
    $n_env++;
    my $doc = "$dir/doc$n_env";
    open my $fh, '>:raw', $doc or die;
    print $fh $bytes;
    close $fh or die;
    my $env = "$dir/doc$n_env.kmdc";
    my ($rc, $out) = run($kmdc, '--card', $from->{file}, 'seal', '--to', $to, '-o', $env, $doc);
    die "kmdc seal failed ($rc): $out" if $rc;
    return $env;
}

sub post {
    my ($env) = @_;
    my $code = post_envelope($url, $env);
    die "curl failed: $code" if $code !~ /^\d+$/;
    return $code + 0;
}

# ---- the page itself --------------------------------------------------------------
my @metrics = qw(kmdc_send_total kmdc_send_bytes_total kmdc_deliveries_total
                 kmdc_requests_total kmdc_auth_failures_total kmdc_activations_total
                 kmdc_longpoll_waiting kmdc_longpoll_suspended kmdc_db_unavailable_total
                 kmdc_db_round_trips_total kmdc_start_time_seconds
                 kmdc_request_duration_seconds kmdc_db_pool_in_use kmdc_db_pool_waiting
                 kmdc_uploads_in_flight kmdc_build_info kmdc_db_errors_total);
my $start_time;
{
    my ($code, $h, $body) = page();
    is($code, 200, 'GET /kmdc-metrics: 200');
    like($h, qr{^Content-Type: text/plain; version=0\.0\.4; charset=utf-8\r?$}mi,
         '... Content-Type text/plain; version=0.0.4');
    like($body, qr/\n\z/, '... the text ends with a newline');
    my $p = parse($body);
    is_deeply($p->{bad}, [], '... every line is a comment or name{labels} value')
        or diag(join "\n", @{ $p->{bad} });
    my @missing = grep { !$p->{types}{$_} } @metrics;
    is_deeply(\@missing, [], '... every metric has a TYPE line');
    is_deeply([sort grep { !/_total$/ } grep { $p->{types}{$_} eq 'counter' } keys %{ $p->{types} }],
              [], '... counters are named *_total');
    is($p->{types}{kmdc_longpoll_waiting}, 'gauge', '... kmdc_longpoll_waiting is a gauge');
    is(join(' ', map { $p->{types}{$_} // '-' } qw(kmdc_db_pool_in_use kmdc_db_pool_waiting
                                                    kmdc_uploads_in_flight kmdc_build_info
                                                    kmdc_request_duration_seconds)),
       'gauge gauge gauge gauge histogram', '... the pool, upload and build gauges, the histogram');
    is(join(' ', map { $p->{samples}{$_} // '-' } qw(kmdc_db_pool_in_use kmdc_db_pool_waiting
                                                      kmdc_uploads_in_flight)),
       '0 0 0', '... no connection borrowed, none waited for, no upload now');
    my @info = grep { /^kmdc_build_info\{version="[0-9][^"]*",schema="6"\}$/ } keys %{ $p->{samples} };
    ok(@info == 1 && $p->{samples}{$info[0]} == 1, '... kmdc_build_info{version,schema="6"} 1')
        or diag(explain([grep { /build_info/ } keys %{ $p->{samples} }]));
    my $hist_ok = 1;
    for my $ep (@endpoints) {
        my $n = 0;
        for my $le (qw(0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 60 120 300 +Inf)) {
            my $v = $p->{samples}{"kmdc_request_duration_seconds_bucket{endpoint=\"$ep\",le=\"$le\"}"};
            $hist_ok = 0 unless defined $v && $v >= $n;
            $n = $v // $n;
        }
        $hist_ok = 0 unless ($p->{samples}{"kmdc_request_duration_seconds_count{endpoint=\"$ep\"}"} // -1) == $n
            && defined $p->{samples}{"kmdc_request_duration_seconds_sum{endpoint=\"$ep\"}"};
    }
    ok($hist_ok, '... a histogram per endpoint: cumulative buckets, +Inf equal to _count, _sum');
    $start_time = $p->{samples}{kmdc_start_time_seconds} // 0;
    ok($start_time > time - 86400 && $start_time <= time + 1,
       "... kmdc_start_time_seconds is a recent Unix time ($start_time)");
    is($p->{samples}{kmdc_longpoll_waiting}, 0, '... no long-poll waits now');

    my $res = request('HEAD', '/kmdc-metrics');
    ok($res->code == 200 && ($res->content // '') eq '', 'HEAD: 200 without a body');
    ($code, $h, $body) = page('POST');
    is($code, 405, 'POST: 405');
    like($h, qr/^Allow: GET, HEAD\r?$/mi, '... Allow: GET, HEAD');
}

# ---- cards (set up before the first reading) -----------------------------------------
my $sender = client_card('mx-sender');
my $r1 = client_card('mx-one');
my $r2 = client_card('mx-two');
my $x = issue_card('mx-x');         # activated in the test, after two wrong codes
my $y = issue_card('mx-y');         # locked in the test
my $wrong = '00000-00000';

# ---- the same numbers from every child ---------------------------------------------------
{
    my @texts = map { (page())[2] } 1 .. 8;
    my %distinct = map { $_ => 1 } @texts;
    is(scalar keys %distinct, 1, 'eight reads over new connections give the same text');
}

my $raw0 = snapshot();
my $m0 = collapse($raw0);
my %want;     # expected deltas, "name{labels}" => n

# ---- activations -----------------------------------------------------------------------
{
    my @codes;
    push @codes, activate($x, code => $wrong)->code for 1 .. 2;
    push @codes, activate($x)->code;
    push @codes, activate($y, code => $wrong)->code for 1 .. 5;
    push @codes, activate($y)->code;
    is("@codes", '403 403 204 403 403 403 403 403 403',
       'activations: two wrong codes, the right one, five wrong (locking), the right one');
    $want{'kmdc_activations_total{result="ok"}'} = 1;
    $want{'kmdc_activations_total{result="failed"}'} = 6;
    $want{'kmdc_activations_total{result="locked"}'} = 2;
    $want{'kmdc_requests_total{endpoint="activate"}'} = 9;
}

# ---- sends -----------------------------------------------------------------------------------
{
    my $e1 = seal($sender, 'mx-one', 'first document');
    my $e2 = seal($sender, 'mx-one,mx-two', 'second document, two recipients');
    my $e3 = seal($sender, 'mx-nobody', 'to nobody');
    my $e4 = seal($sender, 'mx-one', 'tampered');
    my $t = slurp($e4);
    substr($t, 50, 1) = chr(ord(substr($t, 50, 1)) ^ 0x01);    # in the keyblock
    spew($e4, $t);
    my $e5 = spew("$dir/garbage.kmdc", 'KMDX' . ("\0" x 60));
    my @codes = map { post($_) } $e1, $e2, $e1, $e3, $e4, $e5;
    is("@codes", '201 201 200 404 403 400',
       'sends: two accepted, a retry, an unknown recipient, a bad keyblock, bad magic');
    $want{'kmdc_send_total{result="accepted"}'} = 2;
    $want{'kmdc_send_total{result="retry"}'} = 1;
    $want{'kmdc_send_total{result="refused"}'} = 1;
    $want{'kmdc_send_total{result="rejected"}'} = 2;
    $want{'kmdc_send_bytes_total'} = (-s $e1) + (-s $e2);
    $want{'kmdc_deliveries_total'} = 3;
    $want{'kmdc_requests_total{endpoint="send"}'} = 6;
}

# ---- authentication failures ----------------------------------------------------------------
{
    my $target = "/kmdc/mailbox/$x->{serial}";
    my @codes;
    push @codes, request('GET', $target)->code;                       # unsigned
    push @codes, signed($x, 'GET', $target, ak => "\x55" x 32)->code;  # wrong key
    my $nonce = nonce_hex();
    push @codes, signed($x, 'GET', $target, nonce => $nonce)->code;   # fine
    push @codes, signed($x, 'GET', $target, nonce => $nonce)->code;   # replayed
    is("@codes", '401 401 200 401', 'requests: unsigned, wrong key, good, replayed nonce');
    $want{'kmdc_auth_failures_total'} = 3;
    $want{'kmdc_requests_total{endpoint="mailbox_list"}'} = 4;
}

# ---- other endpoints and unknown paths -------------------------------------------------------
{
    my @codes = (request('GET', '/kmdc/health')->code,
                 request('GET', '/kmdc/no-such-thing')->code,
                 request('DELETE', '/kmdc/health')->code,
                 signed($x, 'GET', "/kmdc/card/$x->{serial}")->code);
    is("@codes", '200 404 405 200', 'requests: health, an unknown path, a wrong method, card');
    $want{'kmdc_requests_total{endpoint="health"}'} = 1;
    $want{'kmdc_requests_total{endpoint="unknown"}'} = 2;
    $want{'kmdc_requests_total{endpoint="card"}'} = 1;
}

# ---- malformed serials and ids count as "unknown" --------------------------------------------
subtest 'malformed serials and ids count as "unknown"' => sub {
    # (docs/ADMIN.md: a path that matched no endpoint.)  The route of such a path
    # is known, but its serial or id is not one: neither the endpoint's counter
    # nor any other moves.
    {
        my $before = collapse(snapshot());
        my $mb = "/kmdc/mailbox/$x->{serial}";
        my @codes = (request('GET', '/kmdc/mailbox/XYZ')->code,
                     signed($x, 'GET', "$mb/notanid")->code,
                     signed($x, 'DELETE', "$mb/0000000000000000")->code,
                     signed($x, 'GET', '/kmdc/messages/notanid')->code);
        is("@codes", '404 404 404 404',
           'requests: a malformed serial, a malformed delivery id (GET, DELETE), a malformed message id');
        my $after = collapse(snapshot());
        my %moved;
        for my $ep (qw(unknown mailbox_list mailbox_fetch mailbox_ack messages other)) {
            my $k = "kmdc_requests_total{endpoint=\"$ep\"}";
            $moved{$ep} = ($after->{$k} // 0) - ($before->{$k} // 0);
        }
        is($moved{unknown}, 4, '... kmdc_requests_total{endpoint="unknown"} moved by 4');
        is_deeply([map { "$_=$moved{$_}" } qw(mailbox_list mailbox_fetch mailbox_ack messages other)],
                  [qw(mailbox_list=0 mailbox_fetch=0 mailbox_ack=0 messages=0 other=0)],
                  '... the endpoints of those routes did not move');
        $want{'kmdc_requests_total{endpoint="unknown"}'} += 4;
    }
};

# ---- the long-poll gauge ----------------------------------------------------------------------
{
    my $target = "/kmdc/mailbox/$x->{serial}";
    my $etag = signed($x, 'GET', $target)->header('ETag');
    pipe(my $rd, my $wr) or die;
    my $pid = fork() // die "fork: $!";
    if (!$pid) {
        close $rd;
        my $res = eval { signed($x, 'GET', "$target?wait=3", headers => { 'If-None-Match' => $etag }) };
        print $wr ($res ? $res->code : 0), "\n";
        close $wr;
        POSIX::_exit(0);
    }
    close $wr;
    my $seen = 0;
    my $end = time + 2.5;
    while (time < $end && !$seen) {
        my $s = snapshot();
        $seen = ($s->{kmdc_longpoll_waiting} // 0) == 1;
        sleep 0.05 unless $seen;
    }
    ok($seen, 'kmdc_longpoll_waiting is 1 while one long-poll waits');
    my $code = <$rd> // '';
    chomp $code;
    waitpid($pid, 0);
    is($code, 304, '... which ends with 304');
    is(snapshot()->{kmdc_longpoll_waiting}, 0, '... and then it is 0 again');
    $want{'kmdc_requests_total{endpoint="mailbox_list"}'} += 2;
}

# ---- uploads in flight ------------------------------------------------------------------------
# An upload that stalls after its first bytes is in flight until the client
# goes away.
{
    my ($host, $port) = $url =~ m{^http://([^/:]+):(\d+)} or die "url: $url";
    my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
        or die "connect: $!";
    print {$sock} "POST /kmdc/send HTTP/1.1\r\nHost: $host\r\n"
        . "Content-Type: application/vnd.kmdc.envelope\r\nContent-Length: 100000\r\n\r\nKMDC";
    $sock->flush;
    my $seen = 0;
    my $end = time + 5;
    while (time < $end && !$seen) {
        $seen = (snapshot()->{kmdc_uploads_in_flight} // 0) == 1;
        sleep 0.05 unless $seen;
    }
    ok($seen, 'kmdc_uploads_in_flight is 1 while an upload is in progress');
    close $sock;
    $end = time + 10;
    my $now = 1;
    while (time < $end && $now) {
        $now = snapshot()->{kmdc_uploads_in_flight} // 0;
        sleep 0.05 if $now;
    }
    is($now, 0, '... and 0 once its client went away');
    $want{'kmdc_requests_total{endpoint="send"}'} += 1;
    $want{'kmdc_send_total{result="rejected"}'} += 1;
}

# ---- the deltas ---------------------------------------------------------------------------------
my $raw1 = snapshot();
my $m1 = collapse($raw1);
{
    my @gone = grep { !exists $raw1->{$_} } sort keys %$raw0;
    my @new = grep { !exists $raw0->{$_} && !/^kmdc_requests_total\{endpoint="[a-z_]+",code="\d+"\}$/ }
              sort keys %$raw1;
    ok(!@gone && !@new, 'the second reading has the same samples, and new status codes')
        or diag(explain({ gone => \@gone, new => \@new }));
    my %codes = (activate => '204:1 403:8', send => '200:1 201:2 400:2 403:1 404:1',
                 mailbox_list => '200:2 304:1 401:3', health => '200:1', card => '200:1',
                 unknown => '404:5 405:1', page => '', mailbox_fetch => '', mailbox_ack => '',
                 messages => '', other => '');
    is_deeply({ map { $_ => code_deltas($raw0, $raw1, $_) } @endpoints }, \%codes,
              'kmdc_requests_total counts each answer under its status code');
    my ($counts_ok, @why) = (1);
    for my $ep (@endpoints) {
        my $dc = $raw1->{"kmdc_request_duration_seconds_count{endpoint=\"$ep\"}"}
                 - $raw0->{"kmdc_request_duration_seconds_count{endpoint=\"$ep\"}"};
        my $dr = $m1->{"kmdc_requests_total{endpoint=\"$ep\"}"} - $m0->{"kmdc_requests_total{endpoint=\"$ep\"}"};
        if ($dc != $dr) { $counts_ok = 0; push @why, "$ep: $dc timed, $dr counted"; }
    }
    ok($counts_ok, 'every answered request is timed in its endpoint\'s histogram') or diag("@why");
    my $k = 'kmdc_request_duration_seconds_bucket{endpoint="mailbox_list",le="2.5"}';
    my $slow = ($raw1->{'kmdc_request_duration_seconds_count{endpoint="mailbox_list"}'}
               - $raw0->{'kmdc_request_duration_seconds_count{endpoint="mailbox_list"}'})
               - ($raw1->{$k} - $raw0->{$k});
    is($slow, 1, '... the 3-second long-poll is the one mailbox_list request above 2.5 s');
    my %got;
    for my $k (keys %$m1) {
        # the round trips depend on which connections had prepared what:
        # they only have to grow
        next if $k eq 'kmdc_start_time_seconds' || $k eq 'kmdc_longpoll_waiting'
            || $k eq 'kmdc_db_round_trips_total';
        my $d = $m1->{$k} - ($m0->{$k} // 0);
        $got{$k} = $d if $d != 0;
    }
    for my $k (sort keys %want) {
        is($got{$k} // 0, $want{$k}, "delta of $k is $want{$k}");
    }
    my @extra = grep { !exists $want{$_} } sort keys %got;
    is_deeply(\@extra, [], 'no other counter moved') or diag(explain({ map { $_ => $got{$_} } @extra }));
    cmp_ok($m1->{kmdc_db_round_trips_total}, '>', $m0->{kmdc_db_round_trips_total},
           'kmdc_db_round_trips_total grew with the requests');
    is($m1->{kmdc_start_time_seconds}, $start_time, 'kmdc_start_time_seconds did not change');
}

done_testing();
