# t/100_client.t - the kmdc client end to end: the real kmdc and kmdcadm
# binaries against the real httpd and PostgreSQL of t/run-suite.
#
#  1. send and fetch of 0 B, 1 B, 1 MiB, 100 MiB and 1 GiB, byte for byte,
#     with the peak memory of kmdc (/usr/bin/time) and of the httpd children
#     (VmHWM) asserted below a bound that does not grow with the size; the
#     1 GiB case is skipped when the disk under $TMPDIR is short;
#  2. the curl-only path: kmdc seal, curl -F upload, a fetch with curl and
#     kmdc sign, kmdc open, DELETE;
#  3. deliveries opened out of order (3, then 1 with kmdc open, 2 with kmdc
#     fetch from the card's skipped-key store);
#  4. a delivery that expired before it was fetched: not listed, not
#     fetched, `kmdc status` says expired, the others arrive;
#  5. one card used by two senders at once (the second fails at once with
#     exit status 3, or with --wait sends after the first; no counter spent
#     twice), and by a sender beside a receiver (both work).
# The server configuration for 1 GiB (t/conf/extra.conf.in): LimitRequestBody
# 0 in <Location /kmdc> (the envelope of a 1 GiB document is slightly larger
# than 1 GiB) and the default limits: 1 GiB is exactly the default
# KmdcMaxDocumentSize, and the default KmdcMailboxQuota holds its envelope.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use JSON::PP ();
use KmdcClient qw(:all);
use Time::HiRes qw(time);

my $t_start = time;
my $kmdc = kmdc_bin();
my $w = workdir();
my $MiB = 1 << 20;
my $GiB = 1 << 30;
my $BOUND_KIB = 32 * 1024;       # memory growth allowed from 1 MiB to 1 GiB
my $DISK_FOR_1G_KIB = 6 * 1024 * 1024;

# kmdc send; (result, message id or undef).
sub send_doc {
    my ($from, $to, $doc, %o) = @_;
    my @extra = $o{name} ? ('--name', $o{name}) : ();
    my $r = run({ rss => $o{rss} }, $kmdc, '--card', $from->{file}, '-q', 'send', '--to', $to,
                @extra, $doc);
    my ($id) = $r->{out} =~ /^([0-9a-f]{16}) \d+ /m;
    return ($r, $id);
}

# kmdc fetch into a fresh folder; (result, folder).
sub fetch {
    my ($card, %o) = @_;
    my $d = $o{dir} // newdir();
    my $r = run({ rss => $o{rss} }, $kmdc, '--card', $card->{file}, '-q', 'fetch', '-d', $d);
    return ($r, $d);
}

my $p = "c100-$$";
my $alice = card("$p-alice");
my $bob = card("$p-bob");
my $carol = card("$p-carol");
my $dave = card("$p-dave");
my $erin = card("$p-erin");
ok(1, 'five cards issued with kmdcadm and activated with kmdc');

# ---- 1. sizes and memory -----------------------------------------------------------

my %mem;        # size => {send, fetch, httpd} in KiB
my $asan_httpd = module_has_asan();
# the document, its outbox envelope and the fetched copy go under $w; the
# database (KMDC_WORK of t/run-suite) stores the payload and its WAL
my ($free_kib) = sort { $a <=> $b } map { free_disk_kib($_) // 0 } $w, $ENV{KMDC_WORK} // $w;
my $big_ok = $free_kib >= $DISK_FOR_1G_KIB;
diag(sprintf('free disk under %s: %.1f GiB (the 1 GiB case needs about %d GiB)', $w,
             $free_kib / 1024 / 1024, $DISK_FOR_1G_KIB / 1024 / 1024));

for my $case ([ '0 B', 0 ], [ '1 B', 1 ], [ '1 MiB', $MiB ], [ '100 MiB', 100 * $MiB ],
              [ '1 GiB', $GiB ]) {
    my ($label, $size) = @$case;
    SKIP: {
        if ($size == $GiB && !$big_ok) {
            my $msg = sprintf('1 GiB: only %.1f GiB free under %s, about %d GiB needed '
                              . '(document, envelope, PostgreSQL, fetched copy)',
                              $free_kib / 1024 / 1024, $w, $DISK_FOR_1G_KIB / 1024 / 1024);
            diag("SKIPPING $msg");
            skip($msg, 7);
        }
        my $t0 = time;
        my $doc = document(path('.bin'), $size, "size-$size");
        my $t_gen = time - $t0;
        my ($s, $id) = send_doc($alice, $bob->{addr}, $doc, rss => 1, name => "doc-$size.bin");
        is($s->{rc}, 0, "$label: kmdc send exits 0") or diag(explain_run($s));
        ok(defined $id && $s->{out} =~ /^$id 1 \Q$doc\E$/m,
           "$label: send prints the message id, one delivery and the file")
            or diag($s->{out});
        my ($f, $d) = fetch($bob, rss => 1);
        is($f->{rc}, 0, "$label: kmdc fetch exits 0") or diag(explain_run($f));
        my @got = files_in($d);
        ok(@got == 1 && $got[0] eq "doc-$size.bin" && same("$d/$got[0]", $doc),
           "$label: the recipient has the document once, byte for byte (cmp)")
            or diag("files: @got");
        my ($hwm, $who) = httpd_children_hwm();
        $mem{$size} = { send => $s->{rss_kib}, fetch => $f->{rss_kib}, httpd => $hwm };
        diag(sprintf('%s: generated in %.1f s, send %.1f s (peak RSS %s KiB), fetch %.1f s '
                     . '(peak RSS %s KiB); httpd children VmHWM: %s', $label, $t_gen,
                     $s->{secs}, $s->{rss_kib} // '?', $f->{secs}, $f->{rss_kib} // '?', $who));
        unlink $doc, map { "$d/$_" } @got;
        if ($size >= 100 * $MiB) {
            my $base = $mem{$MiB};
            for my $what (qw(send fetch)) {
                my ($b, $v) = ($base->{$what}, $mem{$size}{$what});
                ok(defined $b && defined $v && $v - $b < $BOUND_KIB,
                   "$label: peak RSS of kmdc $what stays within 32 MiB of the 1 MiB run")
                    or diag("1 MiB: " . ($b // '?') . " KiB, $label: " . ($v // '?') . ' KiB');
            }
            SKIP: {
                # ASan keeps freed memory in quarantine (256 MiB by default)
                skip("$label: httpd runs mod_kmdc built with AddressSanitizer, whose "
                     . 'quarantine of freed memory makes VmHWM meaningless', 1)
                    if $asan_httpd;
                ok(defined $base->{httpd} && defined $hwm && $hwm - $base->{httpd} < $BOUND_KIB,
                   "$label: the httpd children's VmHWM stays within 32 MiB of the 1 MiB run")
                    or diag("after 1 MiB: " . ($base->{httpd} // '?') . " KiB, after $label: "
                            . ($hwm // '?') . " KiB ($who)");
            }
        } else {
            ok(1, "$label: (memory compared for 100 MiB and 1 GiB)");
            ok(1, "$label: (memory compared for 100 MiB and 1 GiB)");
            ok(1, "$label: (memory compared for 100 MiB and 1 GiB)");
        }
    }
}
my $ci = card_info($alice);
is($ci->{outbox}, 0, 'sizes: the sender\'s outbox is empty');
is(db_card($alice)->{up_next}, $ci->{up_next}, 'sizes: the card\'s up_next equals the database\'s');

# ---- 2. the curl-only path ---------------------------------------------------------
subtest '2. the curl-only path' => sub {
    {
        my $doc = document(path('.txt'), 100_000, 'curl');
        my $env = path('.kmdc');
        my $r = run({}, $kmdc, '--card', $alice->{file}, '-q', 'seal', '--to', uc($bob->{addr}),
                    '--name', 'curl doc.txt', '--type', 'text/plain', '-o', $env, $doc);
        is($r->{rc}, 0, 'curl path: kmdc seal writes the envelope') or diag(explain_run($r));
        my $body = path('.json');
        $r = run({}, 'curl', '-sS', '-o', $body, '-w', '%{http_code}', '-F', "serial=$alice->{serial}",
                 '-F', "envelope=\@$env", base_url() . '/send');
        my $j = eval { JSON::PP->new->decode(slurp($body)) };
        is($r->{out}, '201', 'curl path: curl -F serial=... -F envelope=@x.kmdc answers 201')
            or diag(slurp($body));
        my $msg = $j && $j->{message};
        ok($j && $j->{deliveries} == 1 && $msg =~ /^[0-9a-f]{16}$/,
           'curl path: the answer names the message and one delivery');
        my $list = mailbox($bob);
        ok($list && @$list == 1, 'curl path: the mailbox listing (curl + kmdc sign) has it')
            or diag(explain($list));
        my $dl = $list && $list->[0];
        my $down = path('.kmdc');
        my $code = $dl ? curl_get_file($bob, "/mailbox/$bob->{serial}/$dl->{id}", $down) : 0;
        ok($code == 200 && file_size($down) == $dl->{size},
           'curl path: GET of the delivery with curl returns the listed size') or diag("HTTP $code");
        my $out = path('.out');
        $r = run({}, $kmdc, '--card', $bob->{file}, 'open', '-o', $out, $down);
        ok($r->{rc} == 0 && same($out, $doc), 'curl path: kmdc open writes the document byte for byte')
            or diag(explain_run($r));
        like($r->{err}, qr/^from: \Q$alice->{addr}\E \(card $alice->{serial}\)$/m,
             'curl path: kmdc open shows FROM and the sender\'s card');
        like($r->{err}, qr/^name: curl doc\.txt$/m, 'curl path: ... the NAME');
        like($r->{err}, qr/^type: text\/plain$/m, 'curl path: ... the TYPE');
        is(curl_delete($bob, "/mailbox/$bob->{serial}/" . ($dl ? $dl->{id} : 0)), 204,
           'curl path: DELETE with curl + kmdc sign answers 204');
        is(curl_delete($bob, "/mailbox/$bob->{serial}/" . ($dl ? $dl->{id} : 0)), 204,
           'curl path: repeating the DELETE answers 204');
        $list = mailbox($bob);
        ok($list && @$list == 0, 'curl path: the mailbox is empty');
        $r = run({}, $kmdc, '--card', $bob->{file}, 'open', '-o', path('.out'), $down);
        is($r->{rc}, 1, 'curl path: the same envelope does not open twice (its key was erased)')
            or diag(explain_run($r));
        $r = run({}, $kmdc, '--card', $alice->{file}, 'status', $msg // '0');
        ok($r->{rc} == 0 && $r->{out} =~ /^\Q$bob->{addr}\E delivered$/m,
           'curl path: kmdc status shows the recipient as delivered') or diag(explain_run($r));
    }
};

# ---- 3. out of order ---------------------------------------------------------------
subtest '3. out of order' => sub {
    {
        my @docs = map { document(path(".o$_"), 70_000 + $_, "order-$_") } 1 .. 3;
        my @ids;
        my $all = 1;
        for my $i (0 .. 2) {
            my ($r, $id) = send_doc($alice, $bob->{addr}, $docs[$i], name => "order-$i.bin");
            $all &&= $r->{rc} == 0 && defined $id;
            push @ids, $id;
        }
        ok($all, 'out of order: three messages sent to one recipient');
        my $list = mailbox($bob) // [];
        my @seq = map { $_->{seq} } @$list;
        ok(@$list == 3 && $seq[0] < $seq[1] && $seq[1] < $seq[2],
           'out of order: listed in seq order') or diag(explain($list));
        my @env = map { path(".down$_") } 0 .. 2;
        my $got = 1;
        for my $i (2, 0, 1) {
            $got &&= $list->[$i]
                && curl_get_file($bob, "/mailbox/$bob->{serial}/$list->[$i]{id}", $env[$i]) == 200;
        }
        ok($got, 'out of order: the three envelopes downloaded with curl, third first');
        my $out3 = path('.out');
        my $r = run({}, $kmdc, '--card', $bob->{file}, 'open', '-o', $out3, $env[2]);
        ok($r->{rc} == 0 && same($out3, $docs[2]), 'out of order: the third opens first')
            or diag(explain_run($r));
        my $ci = card_info($bob);
        ok($ci->{down_next} == $seq[2] + 1 && $ci->{stored_down_keys} == 2,
           'out of order: the card moved past it and keeps the keys of the two skipped')
            or diag(explain($ci));
        my $out1 = path('.out');
        $r = run({}, $kmdc, '--card', $bob->{file}, 'open', '-o', $out1, $env[0]);
        ok($r->{rc} == 0 && same($out1, $docs[0]), 'out of order: then the first, from a stored key')
            or diag(explain_run($r));
        ok(curl_delete($bob, "/mailbox/$bob->{serial}/$list->[2]{id}") == 204
           && curl_delete($bob, "/mailbox/$bob->{serial}/$list->[0]{id}") == 204,
           'out of order: the two opened are acknowledged with curl');
        my ($f, $d) = fetch($bob);
        is($f->{rc}, 0, 'out of order: kmdc fetch exits 0') or diag(explain_run($f));
        my @files = files_in($d);
        ok(@files == 1 && $files[0] eq 'order-1.bin' && same("$d/$files[0]", $docs[1]),
           'out of order: kmdc fetch writes the second, from a stored key') or diag("files: @files");
        $ci = card_info($bob);
        is($ci->{stored_down_keys}, 0, 'out of order: no key is left in the card');
        $list = mailbox($bob);
        ok($list && @$list == 0, 'out of order: the mailbox is empty');
        $r = run({}, $kmdc, '--card', $bob->{file}, 'open', '-o', path('.out'), $env[1]);
        is($r->{rc}, 1, 'out of order: the second envelope cannot be opened again')
            or diag(explain_run($r));

        # opened with kmdc open but never acknowledged: docs/PROTOCOL.md section 4, "a listed
        # delivery it has already written is simply acknowledged again"
        my $doc4 = document(path('.o4'), 3000, 'order-4');
        ($r) = send_doc($alice, $bob->{addr}, $doc4, name => 'order-4.bin');
        $list = mailbox($bob) // [];
        my $env4 = path('.down4');
        my $out4 = path('.out');
        my $code = @$list == 1 ? curl_get_file($bob, "/mailbox/$bob->{serial}/$list->[0]{id}", $env4)
                               : 0;
        $r = run({}, $kmdc, '--card', $bob->{file}, 'open', '-o', $out4, $env4);
        ok($code == 200 && $r->{rc} == 0 && same($out4, $doc4),
           'opened, not acknowledged: downloaded with curl and opened with kmdc open')
            or diag(explain_run($r));
        ($f, $d) = fetch($bob);
        ok($f->{rc} == 0 && ($list = mailbox($bob)) && @$list == 0,
           'opened, not acknowledged: kmdc fetch acknowledges it (exit 0, mailbox empty)')
            or diag(explain_run($f));
        @files = files_in($d);
        ok(!@files, 'opened, not acknowledged: kmdc fetch does not write it a second time')
            or diag("files: @files");
        # whatever the client did, leave the mailbox empty for what follows
        curl_delete($bob, "/mailbox/$bob->{serial}/$_->{id}") for @{ mailbox($bob) // [] };
    }
};

# ---- 4. a delivery that expired before it was fetched --------------------------------
subtest '4. a delivery that expired before it was fetched' => sub {
    {
        my @docs = map { document(path(".e$_"), 1000 * $_, "expiry-$_") } 1 .. 3;
        my @ids;
        for my $i (0 .. 2) {
            my ($r, $id) = send_doc($alice, $carol->{addr}, $docs[$i], name => "exp-$i.txt");
            push @ids, $id;
        }
        ok(3 == grep({ defined } @ids), 'expiry: three messages sent');
        my $before = mailbox($carol) // [];
        # the delivery of the second message expires
        my $n = sql("UPDATE deliveries SET expires_at = now() - interval '1 hour' "
                    . "WHERE message_id = x'" . ($ids[1] // '0') . "'::bigint RETURNING id");
        ok($n =~ /^\d+$/, 'expiry: the second message\'s delivery set to expire in the past (psql)');
        my $expired_id = sprintf('%016x', $n =~ /^(\d+)$/ ? $1 : 0);
        my $list = mailbox($carol) // [];
        ok(@$before == 3 && @$list == 2 && !grep({ $_->{id} eq $expired_id } @$list),
           'expiry: it is no longer listed, the two others are')
            or diag("before: " . explain($before) . " after: " . explain($list));
        is(curl_get_file($carol, "/mailbox/$carol->{serial}/$expired_id", path('.x')), 404,
           'expiry: GET of the expired delivery answers 404');
        my ($f, $d) = fetch($carol);
        is($f->{rc}, 0, 'expiry: kmdc fetch exits 0') or diag(explain_run($f));
        my @files = files_in($d);
        ok(@files == 2 && $files[0] eq 'exp-0.txt' && $files[1] eq 'exp-2.txt'
           && same("$d/exp-0.txt", $docs[0]) && same("$d/exp-2.txt", $docs[2]),
           'expiry: the first and third arrive byte for byte, the expired one does not')
            or diag("files: @files");
        $list = mailbox($carol);
        ok($list && @$list == 0, 'expiry: the mailbox is empty afterwards');
        my $r = run({}, $kmdc, '--card', $alice->{file}, 'status', $ids[1] // '0');
        ok($r->{rc} == 0 && $r->{out} =~ /^\Q$carol->{addr}\E expired$/m,
           'expiry: kmdc status of the expired message says expired') or diag(explain_run($r));
        $r = run({}, $kmdc, '--card', $alice->{file}, 'status', $ids[0] // '0');
        ok($r->{rc} == 0 && $r->{out} =~ /^\Q$carol->{addr}\E delivered$/m,
           'expiry: kmdc status of a fetched message says delivered') or diag(explain_run($r));
        diag('expiry: the card keeps ' . card_info($carol)->{stored_down_keys}
             . ' stored key(s) for the counter of the expired delivery');
    }
};

# ---- 5. one card, two kmdc at once ---------------------------------------------------
subtest '5. one card, two kmdc at once' => sub {
    {
        my $size = 100 * $MiB;
        my %doc = map { $_ => document(path(".$_"), $size, "conc-$_") } qw(A B C D);
        my $lock = "$dave->{file}.send.lock";
        my $send = sub {
            my ($which, @g) = @_;
            return start({}, $kmdc, '--card', $dave->{file}, '-q', @g, 'send', '--to',
                         $erin->{addr}, '--name', "conc-$which.bin", $doc{$which});
        };

        # two senders: the second fails at once with exit status 3
        my $h1 = $send->('A');
        ok(wait_until(30, sub { lock_held($lock) || !is_running($h1) }) && is_running($h1),
           'two senders: the first holds the card\'s send lock while it works');
        my $t0 = time;
        my $r2 = run({}, $kmdc, '--card', $dave->{file}, '-q', 'send', '--to', $erin->{addr},
                     '--name', 'conc-B.bin', $doc{B});
        my $dt = time - $t0;
        my $first_busy = is_running($h1);
        ok($r2->{rc} == 3 && $dt < 5, 'two senders: the second exits with status 3 (locked) at once')
            or diag(explain_run($r2));
        like($r2->{err}, qr/lock|another kmdc|in use/i, 'two senders: ... and says why');
        is($r2->{out}, '', 'two senders: ... and sent nothing');
        diag(sprintf('two senders: the second gave up after %.2f s; the first was %s', $dt,
                     $first_busy ? 'still sending' : 'already done'));
        my $r1 = finish($h1);
        is($r1->{rc}, 0, 'two senders: the first succeeds') or diag(explain_run($r1));

        # with --wait the second waits for the first, then sends
        $h1 = $send->('B');
        wait_until(30, sub { lock_held($lock) || !is_running($h1) });
        my $h2 = $send->('C', '--wait');
        wait_until(300, sub { !is_running($h1) });
        my $second_busy = is_running($h2);
        $r1 = finish($h1);
        $r2 = finish($h2);
        ok($r1->{rc} == 0 && $r2->{rc} == 0, 'two senders with --wait: both succeed')
            or diag(explain_run($r1) . ' / ' . explain_run($r2));
        ok($second_busy, 'two senders with --wait: the second was still at work when the first '
           . 'ended (it waited for the lock, then sealed and sent)');

        my $ci = card_info($dave);
        my $db = db_card($dave);
        ok($ci->{up_next} == 3 && $db->{up_next} == 3 && $db->{receipts} == 3,
           'two senders: three envelopes sealed, the card and the database agree on up_next 3, '
           . 'three receipts (no counter spent twice)') or diag(explain([$ci, $db]));
        is($ci->{outbox}, 0, 'two senders: the outbox is empty');
        my ($f, $d) = fetch($erin);
        is($f->{rc}, 0, 'two senders: the recipient fetches') or diag(explain_run($f));
        my @files = files_in($d);
        ok("@files" eq 'conc-A.bin conc-B.bin conc-C.bin'
           && !grep({ !same("$d/conc-$_.bin", $doc{$_}) } qw(A B C)),
           'two senders: A, B and C arrive once each, byte for byte') or diag("files: @files");
        unlink map { "$d/$_" } @files;

        # a sender beside a receiver of the same card
        my $small = document(path('.s'), 5000, 'conc-small');
        my ($rs) = send_doc($erin, $dave->{addr}, $small, name => 'to-dave.txt');
        is($rs->{rc}, 0, 'sender beside receiver: a message for the sending card is queued')
            or diag(explain_run($rs));
        $h1 = $send->('D');
        wait_until(30, sub { lock_held($lock) || !is_running($h1) });
        my ($rf, $dd) = fetch($dave);
        my $still = is_running($h1);
        is($rf->{rc}, 0, 'sender beside receiver: kmdc fetch on the sending card succeeds')
            or diag(explain_run($rf));
        ok($still, 'sender beside receiver: ... while the send is still running (it did not wait)');
        my @df = files_in($dd);
        ok(@df == 1 && same("$dd/$df[0]", $small), 'sender beside receiver: the fetched document')
            or diag("files: @df");
        $r1 = finish($h1);
        is($r1->{rc}, 0, 'sender beside receiver: the send succeeds') or diag(explain_run($r1));
        ($f, $d) = fetch($erin);
        @files = files_in($d);
        ok($f->{rc} == 0 && "@files" eq 'conc-D.bin' && same("$d/conc-D.bin", $doc{D}),
           'sender beside receiver: the recipient gets D once') or diag("files: @files");
        $ci = card_info($dave);
        $db = db_card($dave);
        ok($ci->{up_next} == 4 && $db->{up_next} == 4, 'sender beside receiver: up_next 4 on both sides')
            or diag(explain([$ci, $db]));
        unlink values %doc, map { "$d/$_" } @files;
    }
};

diag(sprintf('t/100_client.t ran in %.0f s', time - $t_start));

done_testing();
