# t/042_publish_race.t - publications that race each other.
#
# The publication writes the rows that lock no card (message, receipt, audit
# row) before it locks the sender and the recipients, so that a recipient's
# row is locked only for what needs it.  Races that order must survive:
#
#   - the same envelope POSTed by several clients at once (a retry racing
#     its original): one message, one delivery, one receipt, one audit row,
#     and every client gets the one answer, 201 with the same Location;
#   - two cards sending to each other at the same moment, many times (each
#     locks the other as a recipient): every relay 201, no deadlock;
#   - a card sending to itself (one row that both sends and receives):
#     both its counters move by one, and the document comes back intact;
#   - none of it logs a database error (kmdc_db_errors_total does not move).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use KmdcTest qw(:all);
use KmdcUtil qw(slurp spew);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $metrics_url = Apache::TestRequest::resolve_url('/kmdc-metrics');
my $dir = workdir();

sub db_errors {
    my ($rc, $out) = run('curl', '-sS', $metrics_url);
    die "metrics: $out" if $rc;
    my $n = 0;
    $n += $1 while $out =~ /^kmdc_db_errors_total(?:\{[^}]*\})? (\d+)$/mg;
    return $n;
}

# POST each envelope of @envs at once, one process each; the answers as
# [http status, Location] in the same order.
sub post_at_once {
    my (@envs) = @_;
    my @pids;
    for my $i (0 .. $#envs) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            exec('curl', '-sS', '-o', "$dir/body$i", '-D', "$dir/head$i",
                 '-H', 'Content-Type: application/vnd.kmdc.envelope',
                 '--data-binary', "\@$envs[$i]", "$url/send")
                or exit 127;
        }
        push @pids, $pid;
    }
    my @got;
    for my $i (0 .. $#pids) {
        waitpid($pids[$i], 0);
        my $head = -e "$dir/head$i" ? slurp("$dir/head$i") : '';
        my ($code) = $head =~ m{^HTTP/\S+ (\d+)}m;
        my ($loc) = $head =~ /^Location: (\S+)/mi;
        push @got, [$code // 0, $loc // ''];
    }
    return @got;
}

my $alice = issue_card('race-alice');
my $bob = issue_card('race-bob');
for my $c ($alice, $bob) {
    my ($rc, $out) = run($kmdc, '--card', $c->{file}, 'activate', $c->{code});
    die "kmdc activate failed ($rc): $out" if $rc;
}
$alice = { %$alice, %{ read_card($alice->{file}) } };

my $doc = spew("$dir/doc", random_bytes(1024));

sub seal {
    my ($from, $to, $name) = @_;
    my $env = "$dir/$name.kmdc";
    my ($rc, $out) = run($kmdc, '--card', $from->{file}, 'seal', '--to', $to, '-o', $env, $doc);
    die "kmdc seal failed ($rc): $out" if $rc;
    return $env;
}

my $errors0 = db_errors();

subtest 'one envelope POSTed by 8 clients at once, 5 times' => sub {
    for my $round (1 .. 5) {
        my $env = seal($alice, 'race-bob', "same$round");
        my @got = post_at_once(($env) x 8);
        my @codes = map { $_->[0] } @got;
        is(join(' ', sort @codes), '200 200 200 200 200 200 200 201',
           "round $round: one 201, seven 200 (the receipt's answer)");
        my %loc = map { $_->[1] => 1 } @got;
        is(scalar(keys %loc), 1, "round $round: one Location for all") or diag(join ' ', keys %loc);
    }
    my $s = "x'$alice->{serial}'::bigint";
    is(sql("SELECT count(*) FROM messages WHERE sender = $s"), 5, 'five messages');
    is(sql("SELECT count(*) FROM receipts WHERE serial = $s"), 5, 'five receipts');
    is(sql("SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message_id "
           . "WHERE m.sender = $s"), 5, 'five deliveries');
    is(sql("SELECT count(*) FROM audit_log WHERE serial = $s AND event = 'send'"), 5,
       'five audit rows');
    is(sql("SELECT up_next FROM cards WHERE serial = $s"), 5, "the sender's counter moved by 5");
};

subtest 'two cards sending to each other at once, 20 times' => sub {
    my @envs;
    for my $i (1 .. 20) {
        push @envs, seal($alice, 'race-bob', "ab$i"), seal($bob, 'race-alice', "ba$i");
    }
    my @codes;
    while (my @pair = splice(@envs, 0, 2)) {
        push @codes, map { $_->[0] } post_at_once(@pair);
    }
    is(scalar(grep { $_ == 201 } @codes), 40, 'all 40 relays: 201')
        or diag("@codes");
    is(sql("SELECT count(*) FROM deliveries d JOIN messages m ON m.id = d.message_id "
           . "WHERE m.sender IN (x'$alice->{serial}'::bigint, "
           . "(SELECT serial FROM cards WHERE address = 'race-bob'))"), 45,
       '45 deliveries in all (5 + 40)');
};

subtest 'a card sending to itself' => sub {
    my $s = "x'$alice->{serial}'::bigint";
    my ($up0, $down0) = split /\|/, sql("SELECT up_next, down_next FROM cards WHERE serial = $s");
    my @got = post_at_once(seal($alice, 'race-alice', 'self'));
    is($got[0][0], 201, 'alice to alice: 201');
    is(sql("SELECT up_next || ' ' || down_next FROM cards WHERE serial = $s"),
       ($up0 + 1) . ' ' . ($down0 + 1), 'both of its counters moved by one');
    mkdir "$dir/in" or die;
    my ($rc, $out) = run($kmdc, '--card', $alice->{file}, 'fetch', '-d', "$dir/in");
    is($rc, 0, 'alice fetches her mailbox') or diag($out);
    my @same = grep { slurp($_) eq slurp($doc) } glob("$dir/in/*");
    is(scalar(@same), 21, 'the 20 documents from bob and the one to herself, intact')
        or diag(scalar(@same));
};

is(db_errors(), $errors0, 'no database error was logged meanwhile');

done_testing();
