# t/041_round_trips.t - what one request costs the database: round trips
# (kmdc_db_round_trips_total, which counts a batch of pipelined statements
# once) and writing transactions (the transaction ids PostgreSQL hands out:
# only a transaction that writes takes one).
#
#   - a 1 KiB relay whose bytes have all arrived: at most 4 round trips, one
#     writing transaction, no upload slot, no upload row left without its
#     message; the document is fetched intact;
#   - a signed read (GET /card, GET /mailbox): at most 2 round trips (the
#     card, then the nonce record with the read), the nonce recorded;
#   - the deferred nonce record still refuses a replay, also of a request
#     that answers without reading (a malformed delivery id, a forbidden
#     serial), and of DELETE, whose acknowledgement is then not carried out.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use File::Temp qw(tempdir);
use KmdcTest qw(:all);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $metrics_url = Apache::TestRequest::resolve_url('/kmdc-metrics');
my $dir = tempdir('kmdc-rt-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $dir;

sub round_trips {
    my ($rc, $out) = run('curl', '-sS', $metrics_url);
    die "metrics: $out" if $rc;
    my ($n) = $out =~ /^kmdc_db_round_trips_total (\d+)$/m;
    die "no kmdc_db_round_trips_total on the metrics page" unless defined $n;
    return $n;
}

# The next transaction id, without taking one (txid_current would).
sub next_xid { return sql('SELECT txid_snapshot_xmax(txid_current_snapshot())') }

sub slurp_file {
    my ($path) = @_;
    open my $in, '<:raw', $path or die "$path: $!";
    local $/;
    return scalar <$in>;
}

sub post {
    my ($env) = @_;
    my ($rc, $out) = run('curl', '-sS', '-o', "$dir/answer", '-w', '%{http_code}',
                         '-H', 'Content-Type: application/vnd.kmdc.envelope',
                         '--data-binary', "\@$env", "$url/send");
    die "curl failed: $out" if $rc;
    return $out + 0;
}

my $alice = issue_card('rt-alice');
my $bob = issue_card('rt-bob');
for my $c ($alice, $bob) {
    my ($rc, $out) = run($kmdc, '--card', $c->{file}, 'activate', $c->{code});
    die "kmdc activate failed ($rc): $out" if $rc;
}
$bob = { %$bob, %{ read_card($bob->{file}) } };

my $doc = "$dir/doc";
open my $fh, '>:raw', $doc or die;
print $fh random_bytes(1024);
close $fh or die;

sub seal_one {
    my ($n) = @_;
    my $env = "$dir/doc$n.kmdc";
    my ($rc, $out) = run($kmdc, '--card', $alice->{file}, 'seal', '--to', 'rt-bob',
                         '-o', $env, $doc);
    die "kmdc seal failed ($rc): $out" if $rc;
    return $env;
}

# every child's connections have prepared what they run after a few relays;
# the counts below hold from the first relay on (a Prepare rides along with
# its statement), but warm the pool anyway so that a connection's first use
# does not decide the test
for my $i (1 .. 3) {
    my $code = post(seal_one($i));
    die "warm-up relay answered $code" unless $code == 201;
}

# Run $act (which returns an HTTP status) until it costs what is expected, at
# most three times: anything else writing meanwhile (autovacuum's ANALYZE takes
# transaction ids too) can only add.  (status, least round trips, least ids).
sub measured {
    my ($act, $want_xids) = @_;
    my ($code, $rt, $xids);
    for my $try (1 .. 3) {
        my ($rt0, $x0) = (round_trips(), next_xid());
        $code = $act->($try);
        my ($rt1, $x1) = (round_trips(), next_xid());
        $rt = $rt1 - $rt0 if !defined $rt || $rt1 - $rt0 < $rt;
        $xids = $x1 - $x0 if !defined $xids || $x1 - $x0 < $xids;
        last if $xids <= $want_xids && $rt <= 4;
    }
    return ($code, $rt, $xids);
}

{
    # the suite's database is shared: other files leave upload rows of their own
    my $rows0 = upload_rows();
    my ($code, $rt, $xids) = measured(sub { post(seal_one(9 + $_[0])) }, 1);
    is($code, 201, 'a 1 KiB relay: 201');
    cmp_ok($rt, '<=', 4, 'a 1 KiB relay: at most 4 round trips to PostgreSQL')
        or diag("it took $rt");
    # next_xid's own read takes no id: the difference is the relay's
    is($xids, 1, 'a 1 KiB relay: exactly one writing transaction (one commit)');
    is(sql('SELECT count(*) FROM upload_leases'), 0, 'a 1 KiB relay: no upload slot taken');
    is(upload_rows(), $rows0, 'a 1 KiB relay: no upload row, its payload is in its message (schema 6)');
    is(sql('SELECT count(*) FROM uploads u WHERE NOT EXISTS '
           . '(SELECT 1 FROM messages m WHERE m.upload_id = u.id)'), 0,
       'a 1 KiB relay: no upload row without its message');
}

{
    mkdir "$dir/in" or die;
    my ($rc, $out) = run($kmdc, '--card', $bob->{file}, 'fetch', '-d', "$dir/in");
    is($rc, 0, 'the receiver fetches every relayed document') or diag($out);
    my @got = glob("$dir/in/*");
    my $same = grep { slurp_file($_) eq slurp_file($doc) } @got;
    my $sent = sql("SELECT count(*) FROM messages WHERE sender = x'$alice->{serial}'::bigint");
    ok($same == $sent && $sent >= 4, "the $sent fetched documents are the 1 KiB one")
        or diag("$same of @got");
}

$bob = { %$bob, %{ read_card($bob->{file}) } };

{
    my $target = "/kmdc/card/$bob->{serial}";
    my $nonce;
    my ($code, $rt, $xids) = measured(sub {
        $nonce = nonce_hex();
        return signed($bob, 'GET', $target, nonce => $nonce)->code;
    }, 1);
    is($code, 200, 'GET /card: 200');
    cmp_ok($rt, '<=', 2, 'GET /card: at most 2 round trips (card, nonce + read)')
        or diag("it took $rt");
    is($xids, 1, 'GET /card: one writing transaction (the nonce record)');
    is(sql("SELECT count(*) FROM request_nonces WHERE serial = x'$bob->{serial}'::bigint "
           . "AND nonce = '\\x$nonce'::bytea"), 1, 'GET /card: its nonce is recorded');
    my $again = signed($bob, 'GET', $target, nonce => $nonce);
    is($again->code, 401, 'GET /card again with the same nonce: 401');
    like($again->content, qr/replayed nonce/, '... said to be a replay');
}

{
    my $target = "/kmdc/mailbox/$bob->{serial}";
    my ($rt0) = round_trips();
    my $res = signed($bob, 'GET', $target);
    my ($rt1) = round_trips();
    is($res->code, 200, 'GET /mailbox: 200');
    cmp_ok($rt1 - $rt0, '<=', 2, 'GET /mailbox: at most 2 round trips')
        or diag("it took " . ($rt1 - $rt0));
}

{
    # answered without a read: the nonce is recorded before the answer
    my $nonce = nonce_hex();
    my $target = "/kmdc/mailbox/$bob->{serial}/NOTANID";
    my $res = signed($bob, 'GET', $target, nonce => $nonce);
    is($res->code, 404, 'a malformed delivery id after authentication: 404');
    is(signed($bob, 'GET', $target, nonce => $nonce)->code, 401,
       '... and its replay: 401');
    my $other = "/kmdc/card/$alice->{serial}";
    $nonce = nonce_hex();
    is(signed($bob, 'GET', $other, nonce => $nonce)->code, 403,
       "another card's resource: 403");
    is(signed($bob, 'GET', $other, nonce => $nonce)->code, 401, '... and its replay: 401');
}

{
    # a DELETE whose nonce was recorded before (by another request) is
    # refused before its acknowledgement is carried out
    is(post(seal_one(20)), 201, 'one more relay, to acknowledge');
    my ($id) = sql("SELECT lpad(to_hex(d.id), 16, '0') FROM deliveries d "
                   . "WHERE d.recipient = x'$bob->{serial}'::bigint AND d.state = 'queued' "
                   . 'LIMIT 1') =~ /^([0-9a-f]{16})$/;
    $id //= '0' x 16;
    my $nonce = nonce_hex();
    is(signed($bob, 'GET', "/kmdc/card/$bob->{serial}", nonce => $nonce)->code, 200,
       'GET /card records a nonce');
    my $target = "/kmdc/mailbox/$bob->{serial}/$id";
    is(signed($bob, 'DELETE', $target, nonce => $nonce)->code, 401,
       'a DELETE signed with the same nonce: 401');
    is(sql("SELECT state FROM deliveries WHERE id = x'$id'::bigint"), 'queued',
       '... and the delivery was not acknowledged');
    is(signed($bob, 'DELETE', $target)->code, 204, 'the same DELETE with a fresh nonce: 204');
}

done_testing();
