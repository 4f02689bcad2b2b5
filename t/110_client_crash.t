# t/110_client_crash.t - kmdc killed with SIGKILL at each step of send and of
# fetch (the fault-injection points of a build configured with
# --enable-test-hooks: env KMDC_CRASH_AT=<step>), then run again: nothing
# lost, nothing duplicated, the card in sync with the datacenter.
#
# Send steps (kmdc/kmdc_cli.h), and the right outcome of each:
#   send:after-reserve        counter reserved in memory only: nothing spent,
#                             nothing sent; the user sends the document again
#   send:after-card-save      counter saved as used, no envelope: the counter
#                             is skipped (the window absorbs it); sent again
#   send:after-seal           envelope in an outbox temp file, not committed:
#                             the next send sweeps it; counter skipped; sent
#                             again by the user
#   send:after-outbox-commit  envelope committed to the outbox: the next kmdc
#                             send uploads it first, byte for byte; delivered
#                             once, the user must not send it again
#   send:after-upload         the datacenter answered, the entry is still in
#                             the outbox: the next send retries it, gets the
#                             stored answer (same message), delivered once
# After each: a plain `kmdc send` of another document, the recipient fetches
# each document exactly once, up_next of the card equals the database's, the
# counters used and receipts written are the ones expected, `kmdc card` shows
# an empty outbox, and no temp file is left beside the card.
#
# Fetch steps: fetch:after-advance, fetch:after-rename, fetch:after-record,
# fetch:before-ack; after each crash (two deliveries pending, the crash comes
# in the first) a plain fetch into the same folder: each document exactly
# once in the folder, both deliveries acknowledged (mailbox empty), no temp
# files, no key left in the card.
#
# Then, in any build, kmdc killed from outside in the middle of a transfer:
# a send while its envelope is being uploaded (the next send retries it from
# the outbox; the datacenter drops the half-received upload) and a fetch
# while the document is being written (the next fetch writes it once).
#
# In a build without test hooks the named-step tests are reported as skipped
# (configure --enable-test-hooks, as scripts/check does, to run them).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use KmdcClient qw(:all);
use Time::HiRes qw(time);

my @send_steps = (
    # step, counters skipped, retried from the outbox by the next send
    [ 'send:after-reserve',       0, 0 ],
    [ 'send:after-card-save',     1, 0 ],
    [ 'send:after-seal',          1, 0 ],
    [ 'send:after-outbox-commit', 0, 1 ],
    [ 'send:after-upload',        0, 1 ],
);
my @fetch_steps = qw(fetch:after-advance fetch:after-rename fetch:after-record fetch:before-ack);
my $PER_SEND = 10;
my $PER_FETCH = 8;

# docs/PROTOCOL.md section 4 has the card record "delivery id -> file written" before the
# final rename; kmdc/kmdc_fetch.c renames first, so a crash between the two
# writes the document a second time ("name (1)").  Reported to the lead.
my %todo = ();    # no known bug left

# The count is checked at the end (done_testing): one per step of each table.
my $n_tests = 1 + @send_steps * $PER_SEND + @fetch_steps * $PER_FETCH + 8;

my $t_start = time;
my $kmdc = kmdc_bin();

my $p = "c110-$$";
my $sender = card("$p-send");
my $rcpt = card("$p-rcpt");
my $reader = card("$p-read");
ok(1, 'cards issued with kmdcadm and activated with kmdc');

sub send_doc {
    my ($from, $to, $doc, $name, %env) = @_;
    return run({ env => \%env }, $kmdc, '--card', $from->{file}, '-q', 'send', '--to',
               $to->{addr}, '--name', $name, $doc);
}

sub no_temps {
    my ($card) = @_;
    my @l = leftovers($card->{dir});
    if (opendir(my $dh, "$card->{file}.outbox")) {
        push @l, map { "outbox/$_" } grep { !/^[0-9a-f]{16}\.kmdc$/ && !/^\.\.?$/ } readdir $dh;
        closedir $dh;
    }
    return @l;
}

SKIP: {
    unless (has_test_hooks()) {
        my $msg = 'this kmdc has no fault-injection points: configure the build with '
            . '--enable-test-hooks (scripts/check does) to run the crash tests at named steps';
        diag("SKIPPING $msg");
        skip($msg, @send_steps * $PER_SEND + @fetch_steps * $PER_FETCH);
    }

    # ---- send ---------------------------------------------------------------------

    for my $st (@send_steps) {
        my ($step, $skipped, $from_outbox) = @$st;
        (my $tag = $step) =~ s/^send://;
        my $up0 = card_info($sender)->{up_next};
        my $rc0 = db_card($sender)->{receipts};
        my $dl0 = sql("SELECT count(*) FROM deliveries WHERE recipient = x'$rcpt->{serial}'::bigint");
        my $docA = document(path('.a'), 150_000, "$step A");
        my $docB = document(path('.b'), 90_000, "$step B");

        my $r = send_doc($sender, $rcpt, $docA, "$tag-A.bin", KMDC_CRASH_AT => $step);
        is($r->{sig}, 9, "$step: kmdc send is killed by SIGKILL there") or diag(explain_run($r));

        $r = send_doc($sender, $rcpt, $docB, "$tag-B.bin");
        is($r->{rc}, 0, "$step: the next kmdc send (another document) exits 0")
            or diag(explain_run($r));
        my @lines = split /\n/, $r->{out};
        my @retried = grep { / outbox:[0-9a-f]{16}$/ } @lines;
        my @fresh = grep { /^[0-9a-f]{16} 1 \Q$docB\E$/ } @lines;
        if ($from_outbox) {
            ok(@retried == 1 && @fresh == 1 && $lines[0] eq $retried[0],
               "$step: it first uploads the crashed envelope from the outbox, then the new one")
                or diag($r->{out});
        } else {
            ok(!@retried && @fresh == 1 && @lines == 1,
               "$step: nothing was in the outbox; it sends the new document only")
                or diag($r->{out});
            # the crashed document never left: the user sends it again
            $r = send_doc($sender, $rcpt, $docA, "$tag-A.bin");
            is($r->{rc}, 0, "$step: the user sends the crashed document again")
                or diag(explain_run($r));
        }
        ok(1, "$step: (no resend needed: it was in the outbox)") if $from_outbox;

        my ($f, $d);
        $d = newdir();
        $f = run({}, $kmdc, '--card', $rcpt->{file}, '-q', 'fetch', '-d', $d);
        my @files = files_in($d);
        ok($f->{rc} == 0 && "@files" eq "$tag-A.bin $tag-B.bin"
           && same("$d/$tag-A.bin", $docA) && same("$d/$tag-B.bin", $docB),
           "$step: the recipient gets each document exactly once, byte for byte")
            or diag("files: @files; " . explain_run($f));

        my $ci = card_info($sender);
        my $db = db_card($sender);
        ok($ci->{up_next} >= $db->{up_next} && $ci->{up_next} - $db->{up_next} < 64,
           "$step: the card's up_next is within the window of the database's")
            or diag("card $ci->{up_next}, database $db->{up_next}");
        is($ci->{up_next}, $db->{up_next},
           "$step: ... and equal to it (the last envelope carried the card's last counter)");
        is($ci->{up_next} - $up0, 2 + $skipped,
           "$step: counters used: 2" . ($skipped ? " and $skipped skipped" : ', none skipped'));
        ok($db->{receipts} - $rc0 == 2
           && sql("SELECT count(*) FROM deliveries WHERE recipient = x'$rcpt->{serial}'::bigint")
              - $dl0 == 2,
           "$step: the datacenter wrote two receipts and two deliveries, no duplicate")
            or diag("receipts +" . ($db->{receipts} - $rc0));
        my @temps = no_temps($sender);
        ok($ci->{outbox} == 0 && !@temps,
           "$step: kmdc card shows an empty outbox; no temp file beside the card")
            or diag("outbox $ci->{outbox}; temps: @temps");
        unlink $docA, $docB, map { "$d/$_" } @files;
    }

    # ---- fetch --------------------------------------------------------------------

    for my $step (@fetch_steps) {
        (my $tag = $step) =~ s/^fetch://;
        my @docs = map { document(path(".$_"), 100_000 + $_, "$step $_") } 1 .. 2;
        my $sent = 1;
        for my $i (1, 2) {
            my $r = send_doc($sender, $reader, $docs[$i - 1], "$tag-$i.bin");
            $sent &&= $r->{rc} == 0;
        }
        my $d = newdir();
        my $r = run({ env => { KMDC_CRASH_AT => $step } }, $kmdc, '--card', $reader->{file}, '-q',
                    'fetch', '-d', $d);
        ok($sent && $r->{sig} == 9, "$step: kmdc fetch is killed by SIGKILL there")
            or diag(explain_run($r));
        opendir my $dh, $d or die;
        diag("$step: after the crash the folder holds: "
             . join(' ', sort grep { !/^\.\.?$/ } readdir $dh));
        closedir $dh;

        $r = run({}, $kmdc, '--card', $reader->{file}, '-q', 'fetch', '-d', $d);
        is($r->{rc}, 0, "$step: the next kmdc fetch into the same folder exits 0")
            or diag(explain_run($r));
        my @files = files_in($d);
        {
            local $TODO = $todo{$step};
            ok("@files" eq "$tag-1.bin $tag-2.bin",
               "$step: each document exactly once in the folder") or diag("files: @files");
        }
        ok(same("$d/$tag-1.bin", $docs[0]) && same("$d/$tag-2.bin", $docs[1]),
           "$step: both documents byte for byte");
        my $list = mailbox($reader);
        ok($list && @$list == 0, "$step: both deliveries acknowledged (the mailbox is empty)")
            or diag(explain($list));
        my @temps = leftovers($d);
        ok(!@temps, "$step: no temp file left in the folder") or diag("temps: @temps");
        my $ci = card_info($reader);
        my $db = db_card($reader);
        is($ci->{stored_down_keys}, 0, "$step: no message key left in the card");
        is($ci->{down_next}, $db->{down_next}, "$step: the card's down_next equals the database's");
        unlink @docs, map { "$d/$_" } @files;
    }
}

# ---- killed from outside in the middle of a transfer (any build) -----------------

{
    # mid-upload: the envelope is committed to the outbox, the body half sent
    my $big = document(path('.u'), 256 << 20, 'mid-upload');
    my $small = document(path('.v'), 10_000, 'after mid-upload');
    my $up0 = card_info($sender)->{up_next};
    my $h = start({}, $kmdc, '--card', $sender->{file}, '-q', 'send', '--to', $rcpt->{addr},
                  '--name', 'mid-upload.bin', $big);
    wait_until(120, sub { my @e = glob("$sender->{file}.outbox/*.kmdc"); !is_running($h) || @e });
    Time::HiRes::sleep(0.3);
    kill 'KILL', $h->{pid};
    my $r = finish($h);
    my $ci = card_info($sender);
    ok($r->{sig} == 9 && $ci->{outbox} == 1,
       'mid-upload: kmdc send killed by SIGKILL while it uploads; the envelope is in the outbox')
        or diag(explain_run($r) . "; outbox $ci->{outbox}");
    my $orphans = 'SELECT count(*) FROM uploads u WHERE NOT EXISTS '
        . '(SELECT 1 FROM messages m WHERE m.upload_id = u.id)';
    ok(wait_until(30, sub { sql($orphans) == 0 }),
       'mid-upload: the datacenter drops the half-received upload (no orphan upload rows)');
    $r = send_doc($sender, $rcpt, $small, 'after-mid-upload.txt');
    my @lines = split /\n/, $r->{out};
    ok($r->{rc} == 0 && @lines == 2 && $lines[0] =~ / outbox:[0-9a-f]{16}$/,
       'mid-upload: the next kmdc send uploads the outbox entry first, then the new document')
        or diag(explain_run($r));
    my $d = newdir();
    my $f = run({}, $kmdc, '--card', $rcpt->{file}, '-q', 'fetch', '-d', $d);
    my @files = files_in($d);
    ok($f->{rc} == 0 && "@files" eq 'after-mid-upload.txt mid-upload.bin'
       && same("$d/mid-upload.bin", $big) && same("$d/after-mid-upload.txt", $small),
       'mid-upload: the recipient gets both documents exactly once, byte for byte')
        or diag("files: @files; " . explain_run($f));
    $ci = card_info($sender);
    my $db = db_card($sender);
    ok($ci->{up_next} == $db->{up_next} && $ci->{up_next} == $up0 + 2 && $ci->{outbox} == 0,
       'mid-upload: two counters used, the card and the database agree, the outbox is empty')
        or diag(explain([$ci, $db]));
    unlink $big, $small, map { "$d/$_" } @files;

    # mid-download: a temp file is being written
    my $doc = document(path('.x'), 256 << 20, 'mid-download');
    $r = send_doc($sender, $reader, $doc, 'mid-download.bin');
    $d = newdir();
    $h = start({}, $kmdc, '--card', $reader->{file}, '-q', 'fetch', '-d', $d);
    wait_until(120, sub {
        return 1 unless is_running($h);
        opendir my $dh, $d or return 0;
        my @part = grep { /\.part$/ } readdir $dh;
        closedir $dh;
        return @part && (-s "$d/$part[0]" // 0) > (1 << 20);
    });
    kill 'KILL', $h->{pid};
    $r = finish($h);
    my $list = mailbox($reader) // [];
    ok($r->{sig} == 9 && !files_in($d) && @$list == 1,
       'mid-download: kmdc fetch killed by SIGKILL while it downloads; still in the mailbox')
        or diag(explain_run($r) . '; listed: ' . scalar(@$list));
    $r = run({}, $kmdc, '--card', $reader->{file}, '-q', 'fetch', '-d', $d);
    @files = files_in($d);
    ok($r->{rc} == 0 && "@files" eq 'mid-download.bin' && same("$d/mid-download.bin", $doc),
       'mid-download: the next kmdc fetch writes the document exactly once, byte for byte')
        or diag("files: @files; " . explain_run($r));
    $list = mailbox($reader);
    my @temps = leftovers($d);
    my $ri = card_info($reader);
    ok($list && @$list == 0 && !@temps && $ri->{stored_down_keys} == 0,
       'mid-download: acknowledged (mailbox empty), no temp file, no key left in the card')
        or diag("temps: @temps; " . explain($ri));
    unlink $doc, map { "$d/$_" } @files;
}

diag(sprintf('t/110_client_crash.t ran in %.0f s', time - $t_start));

done_testing($n_tests);
