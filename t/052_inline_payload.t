# t/052_inline_payload.t - a document whose payload fits one batch travels
# inside the publication in its message's own row (schema 6), without upload
# rows; a larger one still streams through an upload.
#
# Checked here, with the real kmdc client, curl and the database:
#   - a small relay (1000 bytes, and an empty document) writes no uploads or
#     upload_chunks row; its message holds the payload (payload_len bytes,
#     stored uncompressed) and no upload_id;
#   - each recipient fetches and opens it byte for byte; the payload stays
#     while a delivery is queued and is NULL after the last acknowledgement;
#   - a document of more than one batch (5 MiB) goes through an upload as
#     before, its message has no payload, and the upload goes at the last
#     acknowledgement;
#   - the schema refuses a message with both an upload and a payload;
#   - two recipients acknowledging at once, the last of them drops the
#     payload whichever it is;
#   - a payload damaged in the database (shorter or longer than payload_len)
#     is refused before any byte of the answer.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use KmdcTest qw(:all);
use KmdcUtil qw(slurp);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $dir = workdir();

my %card = kmdc_cards($kmdc, qw(inl-ann inl-ben inl-cid));
# a recipient activated in Perl, so that the test can sign its requests
my ($dan, $eve) = map { issue_card($_) } qw(inl-dan inl-eve);
for my $c ($dan, $eve) {
    my $res = activate($c);
    die "activation of $c->{address} failed: " . $res->as_string unless $res->code == 204;
}

# the id of the oldest delivery in the mailbox of a card activated in Perl
sub first_delivery { return (delivery_ids($_[0]))[0] }

my $n = 0;
sub relay {
    my ($from, $to, $size) = @_;
    my ($env, $doc) = kmdc_seal($kmdc, $card{$from}, $to, $size, ++$n . '.bin');
    return (post_envelope($url, $env), $doc);
}

sub fetch_all {
    my ($who) = @_;
    my $d = "$dir/in-$who-" . ++$n;
    mkdir $d or die "mkdir $d: $!";
    my ($rc, $out) = run($kmdc, '--card', $card{$who}{file}, 'fetch', '-d', $d);
    return ($rc, $out, $d);
}


# the newest message of a sender: "upload_id|payload is null|octet_length(payload)|payload_len"
sub newest {
    my ($from) = @_;
    return sql("SELECT coalesce(upload_id::text, '-') || '|' || (payload IS NULL) || '|' "
               . "|| coalesce(octet_length(payload)::text, '-') || '|' || payload_len "
               . "FROM messages WHERE sender = x'$card{$from}{serial}'::bigint "
               . "ORDER BY created_at DESC, sender_seq DESC LIMIT 1");
}

sub newest_id {
    my ($from) = @_;
    return sql("SELECT id FROM messages WHERE sender = x'$card{$from}{serial}'::bigint "
               . "ORDER BY created_at DESC, sender_seq DESC LIMIT 1");
}

my ($doc1, $msg1);
subtest 'a document of one batch travels in its message\'s row' => sub {
    my $before = upload_rows();
    my ($code, $doc) = relay('inl-ann', 'inl-ben,inl-cid', 1000);
    is($code, '201', 'ann to ben and cid, 1000 bytes: 201');
    is(upload_rows(), $before, 'no uploads or upload_chunks row was written');
    my ($upload, $null, $len, $plen) = split /\|/, newest('inl-ann');
    is("$upload $null", '- false', 'its message has no upload and holds the payload');
    ok($plen > 1000 && $len == $plen, "the payload is payload_len bytes ($len)");
    is(sql("SELECT attstorage FROM pg_attribute WHERE attrelid = 'messages'::regclass "
           . "AND attname = 'payload'"), 'e', 'messages.payload is stored uncompressed (EXTERNAL)');
    ($doc1, $msg1) = ($doc, newest_id('inl-ann'));

    ($code) = relay('inl-ann', 'inl-ann', 0);
    is($code, '201', 'an empty document to oneself: 201');
    ($upload, $null, $len, $plen) = split /\|/, newest('inl-ann');
    is("$upload $null $len", "- false $plen", 'its payload too is in the message\'s row');
    is(upload_rows(), $before, 'still no upload row');
};

subtest 'fetched by each recipient; the bytes go at the last acknowledgement' => sub {
    my ($rc, $out, $d) = fetch_all('inl-ben');
    is($rc, 0, 'ben fetches, opens and acknowledges') or diag($out);
    my @got = grep { !/^\./ } map { s{.*/}{}r } glob("$d/*");
    ok(@got == 1 && slurp("$d/$got[0]") eq slurp($doc1), 'ben has the document, byte for byte')
        or diag("files: @got");
    is(sql("SELECT payload IS NULL FROM messages WHERE id = $msg1"), 'f',
       'cid\'s delivery is still queued: the payload stays');
    ($rc, $out, $d) = fetch_all('inl-cid');
    is($rc, 0, 'cid fetches, opens and acknowledges') or diag($out);
    @got = grep { !/^\./ } map { s{.*/}{}r } glob("$d/*");
    ok(@got == 1 && slurp("$d/$got[0]") eq slurp($doc1), 'cid has the document, byte for byte');
    is(sql("SELECT (payload IS NULL) || ' ' || payload_len FROM messages WHERE id = $msg1"),
       'true ' . sql("SELECT payload_len FROM messages WHERE id = $msg1"),
       'after the last acknowledgement the payload is gone (payload_len stays)');
    ($rc, $out, $d) = fetch_all('inl-ann');
    is($rc, 0, 'ann fetches her empty document') or diag($out);
    @got = grep { !/^\./ } map { s{.*/}{}r } glob("$d/*");
    ok(@got == 1 && -z "$d/$got[0]", 'ann has it: an empty file');
    is(sql("SELECT count(*) FROM messages WHERE payload IS NOT NULL AND sender = "
           . "x'$card{'inl-ann'}{serial}'::bigint"), 0, 'no payload of ann\'s is kept any more');
};

subtest 'a document of more than one batch streams through an upload' => sub {
    my $u0 = sql('SELECT count(*) FROM uploads');
    my ($code, $doc) = relay('inl-ann', 'inl-ben', 5 * 1024 * 1024);
    is($code, '201', 'ann to ben, 5 MiB: 201');
    my ($upload, $null) = split /\|/, newest('inl-ann');
    ok($upload ne '-' && $null eq 'true', 'its message names an upload and has no payload of its own');
    is(sql('SELECT count(*) FROM uploads'), $u0 + 1, 'one upload more');
    ok(sql("SELECT count(*) FROM upload_chunks WHERE upload_id = $upload") >= 2,
       'its payload is in more than one upload_chunks row');
    my ($rc, $out, $d) = fetch_all('inl-ben');
    is($rc, 0, 'ben fetches it') or diag($out);
    my @got = grep { !/^\./ } map { s{.*/}{}r } glob("$d/*");
    ok(@got == 1 && slurp("$d/$got[0]") eq slurp($doc), 'byte for byte');
    is(sql("SELECT count(*) FROM uploads WHERE id = $upload"), 0,
       'the upload went at the acknowledgement');
};

subtest 'the schema keeps a payload in one place' => sub {
    my $ann = "x'$card{'inl-ann'}{serial}'::bigint";
    my ($rc, $out) = run('psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-c',
                         'BEGIN; INSERT INTO uploads (id) VALUES (9000000001); '
                         . 'INSERT INTO messages (id, sender, sender_seq, upload_id, size, '
                         . "payload_len, payload) VALUES (9000000002, $ann, 9000000, "
                         . "9000000001, 1, 1, '\\x00'); ROLLBACK;");
    ok($rc != 0 && $out =~ /messages_one_payload/,
       'a message with both an upload and a payload: refused by messages_one_payload')
        or diag($out);
};

subtest 'two last acknowledgements at once: the payload goes' => sub {
    my @left;
    for my $round (1 .. 3) {
        my ($code) = relay('inl-ann', 'inl-dan,inl-eve', 600);
        is($code, '201', "round $round: ann to dan and eve: 201");
        my $msg = newest_id('inl-ann');
        my @ids = map { first_delivery($_) } $dan, $eve;
        my @pids;
        for my $i (0, 1) {
            my $c = ($dan, $eve)[$i];
            my $pid = fork // die "fork: $!";
            if ($pid == 0) {
                my $r = signed($c, 'DELETE', "/kmdc/mailbox/$c->{serial}/$ids[$i]");
                exit($r->code == 204 ? 0 : 1);
            }
            push @pids, $pid;
        }
        my $bad = 0;
        for my $pid (@pids) {
            waitpid($pid, 0);
            $bad++ if $?;
        }
        is($bad, 0, "round $round: both acknowledgements answered 204");
        push @left, sql("SELECT (payload IS NOT NULL)::int FROM messages WHERE id = $msg");
    }
    is("@left", '0 0 0', 'no payload was left behind by the two at once');
};

subtest 'a damaged payload is refused before any answer' => sub {
    for my $case ([ 'cut short', 'substr(payload, 1, 100)' ],
                  [ 'too long', "payload || '\\x00'::bytea" ]) {
        my ($what, $expr) = @$case;
        my ($code) = relay('inl-ann', 'inl-dan', 800);
        is($code, '201', "$what: ann to dan, 800 bytes: 201");
        my $msg = newest_id('inl-ann');
        my $id = first_delivery($dan);
        ok(defined $id, "$what: dan lists the delivery") or return;
        my $good = signed($dan, 'GET', "/kmdc/mailbox/$dan->{serial}/$id");
        is($good->code, 200, "$what: dan fetches it: 200");
        sql("UPDATE messages SET payload = $expr WHERE id = $msg");
        my $bad = signed($dan, 'GET', "/kmdc/mailbox/$dan->{serial}/$id");
        is($bad->code, 500, "$what: the payload damaged in the database: 500, not an envelope")
            or diag($bad->status_line);
        like($bad->header('Content-Type') // '', qr{^application/json}, "$what: a JSON error");
        is(signed($dan, 'DELETE', "/kmdc/mailbox/$dan->{serial}/$id")->code, 204,
           "$what: dan acknowledges it");
    }
};

done_testing();
