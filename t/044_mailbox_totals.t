# t/044_mailbox_totals.t - the mailbox totals (cards.queued_count and
# queued_bytes) stay equal to the queued deliveries they count.
#
# Since schema 5 the publication adds its deliveries to the recipients'
# totals in the UPDATE that advances their chains, and marks its transaction
# (kmdc.totals_kept) so that the deliveries' insert trigger does not count
# them a second time; everything else (acknowledgements, other inserts) is
# still counted by the triggers.  Checked here:
#
#   - after relays to one recipient, to two, from a card to itself, and
#     between two cards crossing, every card's totals equal a recount of its
#     queued deliveries (count, and octet_length(head) + payload_len);
#   - after the recipients fetch and acknowledge, the same, and zero;
#   - a relay moves the recipient's updated_at (its chain changed); an
#     acknowledgement, which changes only the totals, leaves it;
#   - the marker names a message and covers one INSERT: a second INSERT in
#     the same transaction, an INSERT of another message, an INSERT under a
#     marker 'on' and one without a marker are all counted by the trigger;
#   - totals drifted by hand are named by the check and mended by the repair
#     statement docs/SCHEMA.md shows (the test runs the statement from there).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use KmdcTest qw(:all);
use KmdcUtil qw(spew);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $dir = workdir();

my %card = kmdc_cards($kmdc, qw(tot-ann tot-ben tot-cid));
my $in = join(', ', map { "x'$card{$_}{serial}'::bigint" } sort keys %card);

# one line per card whose totals differ from a recount; '' when none do
sub wrong_totals {
    return sql("SELECT string_agg(c.address || ' ' || c.queued_count || '/' || c.queued_bytes "
               . "|| ' counted ' || coalesce(t.n, 0) || '/' || coalesce(t.b, 0), '; ') "
               . "FROM cards c LEFT JOIN (SELECT d.recipient, count(*) AS n, "
               . "sum(octet_length(d.head)::bigint + m.payload_len) AS b FROM deliveries d "
               . "JOIN messages m ON m.id = d.message_id WHERE d.state = 'queued' "
               . "GROUP BY d.recipient) t ON t.recipient = c.serial "
               . "WHERE c.queued_count <> coalesce(t.n, 0) OR c.queued_bytes <> coalesce(t.b, 0)");
}

sub totals {
    my ($who) = @_;
    return sql("SELECT queued_count || ' ' || queued_bytes FROM cards "
               . "WHERE serial = x'$card{$who}{serial}'::bigint");
}

sub updated {
    my ($who) = @_;
    return sql("SELECT updated_at FROM cards WHERE serial = x'$card{$who}{serial}'::bigint");
}

my $n = 0;
sub seal {
    my ($from, $to, $size) = @_;
    my ($env) = kmdc_seal($kmdc, $card{$from}, $to, $size, ++$n);
    return $env;
}

sub post { return post_envelope($url, $_[0]) }

sub relay { return post(seal(@_)) }

subtest 'relays keep the totals' => sub {
    is(wrong_totals(), '', 'before: every card agrees with its deliveries');
    my $ben0 = updated('tot-ben');
    is(relay('tot-ann', 'tot-ben', 1000), '201', 'ann to ben: 201');
    is(totals('tot-ben'), '1 ' . sql("SELECT octet_length(d.head) + m.payload_len FROM deliveries d "
                                     . "JOIN messages m ON m.id = d.message_id WHERE d.recipient = "
                                     . "x'$card{'tot-ben'}{serial}'::bigint"),
       "ben's totals: one delivery, its head and payload");
    isnt(updated('tot-ben'), $ben0, "ben's updated_at moved (his chain advanced)");
    is(relay('tot-ann', 'tot-ben,tot-cid', 70_000), '201', 'ann to ben and cid: 201');
    is(relay('tot-ann', 'tot-ann', 10), '201', 'ann to herself: 201');
    # one envelope of each card at a time: a card's counters are spent in order
    my @codes;
    for my $round (1 .. 3) {
        my @envs = (seal('tot-ben', 'tot-cid', 300), seal('tot-cid', 'tot-ben', 300));
        my @pids;
        for my $i (0, 1) {
            my $pid = fork // die "fork: $!";
            if ($pid == 0) {
                spew("$dir/code$round-$i", post($envs[$i]));
                exit 0;
            }
            push @pids, $pid;
        }
        waitpid($_, 0) for @pids;
        push @codes, map { KmdcUtil::slurp("$dir/code$round-$_") } 0, 1;
    }
    is("@codes", '201 201 201 201 201 201', 'ben and cid crossing, 3 times 2 relays at once: 201');
    is(totals('tot-ben'), '5 ' . sql("SELECT sum(octet_length(d.head) + m.payload_len) FROM deliveries d "
                                     . "JOIN messages m ON m.id = d.message_id WHERE d.recipient = "
                                     . "x'$card{'tot-ben'}{serial}'::bigint"),
       "ben's totals: five deliveries");
    is(wrong_totals(), '', 'after: every card agrees with its deliveries');
};

subtest 'acknowledgements keep the totals, and leave updated_at' => sub {
    my $ben0 = updated('tot-ben');
    for my $who (qw(tot-ben tot-cid)) {
        mkdir "$dir/in-$who" or die;
        my ($rc, $out) = run($kmdc, '--card', $card{$who}{file}, 'fetch', '-d', "$dir/in-$who");
        is($rc, 0, "$who fetches and acknowledges") or diag($out);
    }
    is(totals('tot-ben'), '0 0', "ben's mailbox is empty, his totals 0");
    is(totals('tot-cid'), '0 0', "cid's too");
    is(updated('tot-ben'), $ben0, "ben's updated_at stayed (only his totals changed)");
    is(wrong_totals(), '', 'every card agrees with its deliveries');
};

subtest 'the marker covers one INSERT, of the message it names' => sub {
    my $ann = "x'$card{'tot-ann'}{serial}'::bigint";
    my $cid = "x'$card{'tot-cid'}{serial}'::bigint";
    my $head = "decode(repeat('00', 120), 'hex')";
    my $base = 9_100_000_000_000;
    my $ins = sub {
        my ($k) = @_;
        return "INSERT INTO messages (id, sender, sender_seq, size, payload_len) "
            . "VALUES ($base + $k, $ann, 1000000 + $k, 10, 50); "
            . "INSERT INTO deliveries (message_id, recipient, seq, head, expires_at) "
            . "VALUES ($base + $k, $cid, 1000000 + $k, $head, now() + interval '1 day');";
    };
    my $tot = "SELECT queued_count || ' ' || queued_bytes || ' [' "
        . "|| coalesce(current_setting('kmdc.totals_kept', true), '') || ']' FROM cards WHERE serial = $cid;";
    my @l = split /\n/, sql("BEGIN; SELECT set_config('kmdc.totals_kept', ($base + 1)::text, true); "
                            . $ins->(1) . $tot . $ins->(2) . $tot . "ROLLBACK;");
    is($l[-2], '0 0 []', 'marked with the message: its delivery not counted, the marker cleared');
    is($l[-1], '1 170 []', 'the next INSERT in the same transaction: counted (120 + 50)');
    @l = split /\n/, sql("BEGIN; SELECT set_config('kmdc.totals_kept', ($base + 9)::text, true); "
                         . $ins->(3) . $tot . "ROLLBACK;");
    is($l[-1], '1 170 []', 'a marker naming another message: counted');
    @l = split /\n/, sql("BEGIN; SELECT set_config('kmdc.totals_kept', 'on', true); "
                         . $ins->(4) . $tot . "ROLLBACK;");
    is($l[-1], '1 170 []', "a marker 'on' (set by mistake): counted");
    @l = split /\n/, sql("BEGIN; " . $ins->(5) . $tot . "ROLLBACK;");
    is($l[-1], '1 170 []', 'no marker: counted');
    is(wrong_totals(), '', 'rolled back: every card agrees with its deliveries');
};

subtest 'drifted totals: found by the check, mended by the repair of SCHEMA.md' => sub {
    my $ben = "x'$card{'tot-ben'}{serial}'::bigint";
    is(relay('tot-ann', 'tot-ben', 500), '201', 'ann to ben: 201');
    sql("UPDATE cards SET queued_count = queued_count + 3, queued_bytes = 7 WHERE serial = $ben");
    like(wrong_totals(), qr/^tot-ben 4\/7 counted 1\/\d+$/, 'the check names the drifted card');
    my ($repair) = KmdcUtil::slurp("$ENV{KMDC_SRCDIR}/docs/SCHEMA.md")
        =~ /<!-- totals-repair -->\s*```sql\n(.*?)```/s;
    ok(defined $repair, 'SCHEMA.md shows the repair statement') or return;
    sql($repair);
    is(wrong_totals(), '', 'after the repair every card agrees with its deliveries');
    is(totals('tot-ben'), '1 ' . sql("SELECT octet_length(d.head) + m.payload_len FROM deliveries d "
                                     . "JOIN messages m ON m.id = d.message_id WHERE d.recipient = $ben "
                                     . "AND d.state = 'queued'"), "ben's totals: his one delivery");
};

done_testing();
