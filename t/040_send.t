# t/040_send.t - POST {location}/send end to end: real httpd, real PostgreSQL,
# the real kmdcadm and kmdc binaries, and plain curl.
#
# Relays (one and three recipients; raw, chunked and multipart in both part
# orders; 0 B, 1 B, 64 KiB, 64 KiB + 1 and 50 MiB), byte-identical retries,
# counters at the edge of and outside the window, and for every refusal the
# state read back from the database: refusals before the keyblock
# authenticates change nothing; refusals after it spend exactly the counter
# and deliver nothing.
use strict;
use warnings FATAL => 'all';

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use File::Compare qw(compare);
use File::Copy qw(copy);
use File::Temp qw(tempdir);
use JSON::PP ();
use FindBin ();
use lib "$FindBin::Bin/lib";
use KmdcUtil qw(run sql slurp spew kmdcadm_issue);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $mkey = $ENV{KMDC_MASTER_KEY_FILE} or die "KMDC_MASTER_KEY_FILE not set\n";
my $kmdcadm = "$build/admin/kmdcadm";
my $kmdc = "$build/kmdc/kmdc";
my $testseal = "$build/tools/kmdc-testseal";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $dir = tempdir('kmdc-send-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $dir;
my $json = JSON::PP->new;

# ---- helpers ----------------------------------------------------------------

my $n_files = 0;
sub tmpfile { $n_files++; return "$dir/f$n_files" . ($_[0] // '') }

# A document of n pseudo-random bytes (reproducible).
sub document {
    my ($n) = @_;
    my $path = tmpfile('.doc');
    open my $fh, '>:raw', $path or die;
    my $block = join '', map { chr(($_ * 7 + 3) % 256) } 0 .. 65535;
    my $left = $n;
    while ($left > 0) {
        my $k = $left < length $block ? $left : length $block;
        print $fh substr($block, 0, $k);
        $block = reverse $block;
        $left -= $k;
    }
    close $fh or die;
    return $path;
}

my %cards;
# Issue a card and activate it with the real client.
sub card {
    my ($addr, %o) = @_;
    my $file = "$dir/$addr.card";
    my $i = kmdcadm_issue(address => $addr, url => $url, file => $file);
    unless ($o{inactive}) {
        my ($rc, $out) = run($kmdc, '--card', $file, 'activate', $i->{code});
        die "kmdc activate $addr failed ($rc): $out" if $rc;
    }
    return $cards{$addr} = { addr => $addr, file => $file, serial => $i->{serial},
                             code => $i->{code} };
}

# Seal with the real client; the envelope's path.
sub seal {
    my ($from, $to, $doc, @extra) = @_;
    my $out = tmpfile('.kmdc');
    my ($rc, $msg) = run($kmdc, '--card', $from->{file}, 'seal', '--to', $to, @extra,
                         '-o', $out, $doc);
    die "kmdc seal failed ($rc): $msg" if $rc;
    return $out;
}

# Seal with the test-only sealer (rules a client would never break).
sub testseal {
    my ($from, $to, $doc, @extra) = @_;
    my $out = tmpfile('.kmdc');
    my ($rc, $msg) = run($testseal, '--card', $from->{file}, '--to', $to, @extra, '-o', $out, $doc);
    die "kmdc-testseal failed ($rc): $msg" if $rc;
    return $out;
}

# POST with curl: 'raw', 'chunked', 'multipart' (serial first) or
# 'multipart-envelope-first'; (status, decoded JSON or undef, headers).
sub post {
    my ($env, $how, $serial) = @_;
    my $body = tmpfile('.out');
    my $hdrs = tmpfile('.hdr');
    my @c = ('curl', '-sS', '-o', $body, '-D', $hdrs, '-w', '%{http_code}');
    if ($how eq 'raw') {
        push @c, '-H', 'Content-Type: application/vnd.kmdc.envelope', '--data-binary', "\@$env";
    } elsif ($how eq 'chunked') {
        push @c, '-H', 'Content-Type: application/vnd.kmdc.envelope',
                 '-H', 'Transfer-Encoding: chunked', '--data-binary', "\@$env";
    } elsif ($how eq 'multipart') {
        push @c, '-F', "serial=$serial", '-F', "envelope=\@$env";
    } elsif ($how eq 'multipart-envelope-first') {
        push @c, '-F', "envelope=\@$env", '-F', "serial=$serial";
    } elsif ($how eq 'multipart-raw') {   # a prepared multipart body in $env
        push @c, '-H', "Content-Type: multipart/form-data; boundary=$serial",
                 '--data-binary', "\@$env";
    } else { die $how }
    push @c, "$url/send";
    my ($rc, $code) = run(@c);
    my $j = eval { $json->decode(slurp($body)) };
    return ($code + 0, $j, slurp($hdrs));
}

# Fetch the recipient's mailbox with the client into a fresh folder.
sub fetch {
    my ($card) = @_;
    my $d = tmpfile('.dir');
    mkdir $d or die;
    my ($rc, $out) = run($kmdc, '--card', $card->{file}, 'fetch', '-d', $d);
    return ($rc, $d, $out);
}

sub files_in {
    my ($d) = @_;
    opendir my $dh, $d or die;
    return sort grep { !/^\./ } readdir $dh;
}

# The whole state a send may change.
sub state {
    return sql(q{SELECT (SELECT string_agg(serial || ':' || up_next || ':' || down_next, ','
                                           ORDER BY serial) FROM cards)
                 || '|' || (SELECT count(*) FROM deliveries)
                 || '|' || (SELECT count(*) FROM receipts)
                 || '|' || (SELECT count(*) FROM messages)
                 || '|' || (SELECT count(*) FROM uploads)});
}

sub up_next { sql("SELECT up_next FROM cards WHERE serial = x'$_[0]{serial}'::bigint") }

# ---- cards --------------------------------------------------------------------

my $alice = card('alice');
my $bob = card('bob');
my $carol = card('carol');
my $dave = card('dave');
my $erin = card('erin', inactive => 1);
ok($alice && $bob && $carol && $dave && $erin, 'cards issued (and four activated with kmdc)');

# a card file copied before activation is useless after it
{
    my $gina = card('gina', inactive => 1);
    my $copy = "$dir/gina-before-activation.card";
    copy($gina->{file}, $copy) or die;
    chmod 0600, $copy;
    my ($rc, $out) = run($kmdc, '--card', $gina->{file}, 'activate', $gina->{code});
    is($rc, 0, 'copied card: the original activates') or diag($out);
    my $path = "/kmdc/card/$gina->{serial}";
    ($rc, $out) = run($kmdc, '--card', $copy, 'sign', 'GET', $path);
    chomp $out;
    $out =~ s/^Authorization:\s*//;
    my ($crc, $code) = run('curl', '-s', '-o', '/dev/null', '-w', '%{http_code}',
                           '-H', "Authorization: $out", "$url/card/$gina->{serial}");
    is($code, '401', 'copied card: a request signed by the copy is refused (401)') or diag($out);
    ($rc, $out) = run($kmdc, '--card', $gina->{file}, 'card', '--resync');
    is($rc, 0, 'copied card: the activated original still works') or diag($out);
}

# ---- relays -------------------------------------------------------------------

my @relays = (
    [ 'raw, 1 B, one recipient', 1, 'raw', [$bob] ],
    [ 'raw, 0 B, one recipient', 0, 'raw', [$bob] ],
    [ 'chunked, 64 KiB, one recipient', 65536, 'chunked', [$carol] ],
    [ 'multipart (serial first), 64 KiB + 1, three recipients', 65537, 'multipart',
      [$bob, $carol, $dave] ],
    [ 'multipart (envelope first), 1 B, three recipients', 1, 'multipart-envelope-first',
      [$bob, $carol, $dave] ],
    [ 'raw, 50 MiB, one recipient', 50 * 1024 * 1024, 'raw', [$dave] ],
);
for my $rl (@relays) {
    my ($name, $size, $how, $to) = @$rl;
    my $doc = document($size);
    my $env = seal($alice, join(',', map { $_->{addr} } @$to), $doc, '--name', "doc-$size.bin");
    my ($code, $j, $h) = post($env, $how, $alice->{serial});
    is($code, 201, "$name: 201 Created") or diag(explain($j));
    ok($j && $j->{message} =~ /^[0-9a-f]{16}$/ && $j->{deliveries} == @$to,
       "$name: JSON names the message and " . scalar(@$to) . " deliveries");
    like($h, qr{^Location: \S*/kmdc/messages/$j->{message}\r?$}mi, "$name: Location header")
        if $j;
    ok(1, "$name: (no JSON)") unless $j;
    for my $r (@$to) {
        my ($rc, $d, $out) = fetch($r);
        is($rc, 0, "$name: $r->{addr} fetches") or diag($out);
        my @f = files_in($d);
        ok(@f == 1 && compare("$d/$f[0]", $doc) == 0,
           "$name: $r->{addr} has the document byte for byte") or diag("files: @f; $out");
    }
}

# ---- retries and counters -------------------------------------------------------
subtest 'retries and counters' => sub {
    {
        my $doc = document(100);
        my $env = seal($alice, 'bob', $doc);
        my ($c1, $j1) = post($env, 'raw');
        my ($c2, $j2) = post($env, 'raw');
        my ($c3, $j3) = post($env, 'multipart', $alice->{serial});
        is($c1, 201, 'retry: first upload 201');
        is($c2, 200, 'retry: the byte-identical retry answers 200');
        ok($j1 && $j2 && $j1->{message} eq $j2->{message}, 'retry: same message id');
        ok($j3 && $j3->{message} eq $j1->{message}, 'retry: also through multipart');
        is(sql("SELECT count(*) FROM deliveries WHERE message_id = x'$j1->{message}'::bigint"), 1,
           'retry: one delivery');
        my ($rc, $d) = fetch($bob);
        my @got = files_in($d);
        is(scalar @got, 1, 'retry: the recipient gets it once');

        # the same counter with another envelope: copy the card, seal twice
        my $copy = "$dir/alice-copy.card";
        copy($alice->{file}, $copy) or die;
        chmod 0600, $copy;
        my $a = seal($alice, 'bob', $doc);
        my $b = seal({ %$alice, file => $copy }, 'bob', $doc);
        is((post($a, 'raw'))[0], 201, 'used counter: the first envelope 201');
        my $before = state();
        my ($cb, $jb) = post($b, 'raw');
        is($cb, 403, 'used counter: another envelope for it 403');
        is($jb && $jb->{error}, 'rejected', 'used counter: error rejected');
        is(state(), $before, 'used counter: nothing changed');
        fetch($bob);
    }

    {
        # the window: seal 64 envelopes without sending; the 64th ahead is the edge
        my $doc = document(10);
        my $base = up_next($alice);
        my @envs = map { seal($alice, 'bob', $doc) } 1 .. 65;
        my $before = state();
        my ($c, $j) = post($envs[64], 'raw');     # seq = base + 64: outside a window of 64
        is($c, 403, 'window: seq up_next + 64 is refused');
        is(state(), $before, 'window: nothing changed');
        ($c) = post($envs[63], 'raw');            # seq = base + 63: the edge
        is($c, 201, 'window: seq up_next + 63 is accepted');
        is(up_next($alice), $base + 64, 'window: up_next moved past it');
        ($c) = post($envs[0], 'raw');             # skipped counter below up_next, no receipt
        is($c, 403, 'window: a skipped counter below up_next is refused');
        fetch($bob);
    }
};

# ---- refusals before authentication change nothing -------------------------------

sub refused_before {
    my ($name, $env, $status, $code, $how) = @_;
    my $before = state();
    my ($c, $j) = post($env, $how // 'raw', $alice->{serial});
    is($c, $status, "$name: $status");
    is($j && $j->{error}, $code, "$name: error $code");
    is(state(), $before, "$name: nothing changed");
}

sub patched {
    my ($env, $offset, $xor) = @_;
    my $b = slurp($env);
    substr($b, $offset, 1) = chr(ord(substr($b, $offset, 1)) ^ $xor);
    return spew(tmpfile('.kmdc'), $b);
}

{
    my $doc = document(70000);
    my $env = seal($alice, 'bob', $doc);
    # unknown card: a serial nobody has (patch the header's serial)
    refused_before('unknown card', patched($env, 15, 0x5a), 403, 'rejected');
    refused_before('tampered header (salt)', patched($env, 30, 0x01), 403, 'rejected');
    refused_before('tampered keyblock', patched($env, 60, 0x01), 403, 'rejected');
    refused_before('bad magic', patched($env, 0, 0x20), 400, 'bad_envelope');
    refused_before('version 2', patched($env, 4, 0x03), 400, 'bad_envelope');
    my $b = slurp($env);
    refused_before('truncated in the header', spew(tmpfile('.kmdc'), substr($b, 0, 20)),
                   400, 'incomplete');
    refused_before('truncated in the payload', spew(tmpfile('.kmdc'), substr($b, 0, 5000)),
                   400, 'incomplete');
    my $mp = "--XyZ\r\nContent-Disposition: form-data; name=\"envelope\"\r\n\r\n" . $b
           . "\r\n--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--XyZ--\r\n";
    refused_before('multipart with another part', spew(tmpfile('.mp'), $mp), 400,
                   'bad_multipart', 'multipart-raw');
    refused_before('multipart without close delimiter',
                   spew(tmpfile('.mp'), "--XyZ\r\nContent-Disposition: form-data; "
                              . "name=\"envelope\"\r\n\r\n" . $b), 400, 'bad_multipart',
                   'multipart-raw');
    # suspended and revoked senders
    run($kmdcadm, 'suspend', $alice->{serial});
    refused_before('suspended card', $env, 403, 'rejected');
    run($kmdcadm, 'resume', $alice->{serial});
    my $frank = card('frank');
    my $fenv = seal($frank, 'bob', $doc);
    run($kmdcadm, 'revoke', $frank->{serial});
    refused_before('revoked card', $fenv, 403, 'rejected');
    # a card that was never activated: its envelope's header names it
    my $eb = slurp($env);
    substr($eb, 8, 8) = pack('H16', $erin->{serial});
    refused_before('unactivated card', spew(tmpfile('.kmdc'), $eb), 403, 'rejected');
    # the unmodified envelope still goes through afterwards
    is((post($env, 'raw'))[0], 201, 'after the refusals the original envelope is accepted');
    fetch($bob);
}

# ---- refusals after authentication spend exactly the counter -----------------------

sub refused_after {
    my ($name, $env, $status, $code) = @_;
    my $up = up_next($alice);
    my $d = sql('SELECT count(*) FROM deliveries') . '/' . sql('SELECT count(*) FROM messages');
    my ($c, $j) = post($env, 'raw');
    is($c, $status, "$name: $status");
    is($j && $j->{error}, $code, "$name: error $code");
    is(up_next($alice), $up + 1, "$name: the counter is spent");
    is(sql('SELECT count(*) FROM deliveries') . '/' . sql('SELECT count(*) FROM messages'), $d,
       "$name: nothing delivered");
    is(sql("SELECT http_status FROM receipts WHERE serial = x'$alice->{serial}'::bigint "
           . "AND seq = $up"), $status, "$name: the receipt records the answer");
    is(sql('SELECT count(*) FROM uploads u WHERE NOT EXISTS '
           . '(SELECT 1 FROM messages m WHERE m.upload_id = u.id)'), 0,
       "$name: no upload rows left");
    my ($c2, $j2) = post($env, 'raw');
    is($c2, $status, "$name: a retry gets the same answer");
}

{
    my $doc = document(200000);
    refused_after('unknown recipient', seal($alice, 'bob,nobody', $doc), 404, 'unknown_recipient');
    refused_after('inactive recipient', seal($alice, 'erin', $doc), 404, 'unknown_recipient');
    refused_after('bad NAME (a slash)', testseal($alice, 'bob', $doc, '--name-hex', '612f62'),
                  400, 'bad_name');
    refused_after('bad NAME (U+202E)', testseal($alice, 'bob', $doc, '--name-hex', 'e280ae78'),
                  400, 'bad_name');
    refused_after('stale SENT', testseal($alice, 'bob', $doc, '--sent', '1000'), 400, 'too_old');
    my $env = seal($alice, 'bob', $doc);
    refused_after('tampered chunk', patched($env, -(100), 0x01), 400, 'protocol');
    my $tb = slurp(seal($alice, 'bob', $doc));
    refused_after('bytes after the last chunk', spew(tmpfile('.kmdc'), $tb . ('x' x 16)),
                  400, 'protocol');
    {
        # fill hank's mailbox to its pending count (KmdcMailboxQuota 1000 ...) with SQL
        my $hank = card('hank');
        my $a = "x'$alice->{serial}'::bigint";
        my $h = "x'$hank->{serial}'::bigint";
        sql("INSERT INTO messages (id, sender, sender_seq, size, payload_len) "
            . "SELECT 8000000000000000 + g, $a, 5000000 + g, 0, 16 FROM generate_series(1, 1000) g");
        sql("INSERT INTO deliveries (message_id, recipient, seq, head, expires_at) "
            . "SELECT 8000000000000000 + g, $h, 5000000 + g, decode(repeat('00', 110), 'hex'), "
            . "now() + interval '1 day' FROM generate_series(1, 1000) g");
        refused_after('over the recipient\'s KmdcMailboxQuota', seal($alice, 'hank', $doc),
                      507, 'mailbox_full');
        sql("DELETE FROM deliveries WHERE recipient = $h");
        sql("DELETE FROM messages WHERE id > 8000000000000000 AND id <= 8000000000001000");
    }
    refused_after('over KmdcMaxRecipients',
                  testseal($alice, join(',', map { "r$_" } 1 .. 9), $doc), 413, 'too_large');
}

done_testing();
