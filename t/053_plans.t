# t/053_plans.t - a statement of the module is planned once per database
# connection, not once per request.
#
# The module prepares each statement once on a connection and runs it by
# name.  PostgreSQL may still plan a prepared statement again at every
# execution (a "custom" plan, when it estimates the generic one dearer): it
# did for the mailbox listing of every signed poll and for three statements
# of every relay, which cost more CPU than running them.  The module runs its
# sessions with plan_cache_mode = force_generic_plan.
#
# Checked with pg_stat_statements (t/pgcluster preloads it, with
# track_planning on): after 40 relays to one mailbox and 40 signed polls of
# it, then the fetch and acknowledgement of the 40 deliveries, each statement
# run 40 times or more was planned at most a quarter as often (once per
# connection of the pool: 2 or 3 here, against 10 to 18 and up to one per
# run before); the mailbox listing and the relay's statements were among
# them.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use KmdcTest qw(:all);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $kmdc = "$build/kmdc/kmdc";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};

my $runs = 40;
my %card = kmdc_cards($kmdc, qw(plan-ann));
# the recipient is activated in Perl, so that the test can sign its requests
my $ben = issue_card('plan-ben');
{
    my $res = activate($ben);
    die "activation of plan-ben failed: " . $res->as_string unless $res->code == 204;
}

sql('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
is(sql("SELECT current_setting('pg_stat_statements.track_planning')"), 'on',
   'pg_stat_statements counts plans (t/pgcluster)');

# seal first: sealing reads nothing of the server's database
my @env = map { (kmdc_seal($kmdc, $card{'plan-ann'}, 'plan-ben', 1024, "plan$_"))[0] } 1 .. $runs;
sql('SELECT pg_stat_statements_reset()');

my ($sent, $polled) = (0, 0);
for my $env (@env) {
    $sent++ if post_envelope($url, $env) eq '201';
}
is($sent, $runs, "$runs relays to one mailbox: 201");
for (1 .. $runs) {
    $polled++ if signed($ben, 'GET', "/kmdc/mailbox/$ben->{serial}")->code == 200;
}
is($polled, $runs, "$runs signed listings of that mailbox: 200");
my ($fetched, $acked) = (0, 0);
{
    my @ids = delivery_ids($ben);
    for my $id (@ids[0 .. $runs - 1]) {
        next unless defined $id;
        $fetched++ if signed($ben, 'GET', "/kmdc/mailbox/$ben->{serial}/$id")->code == 200;
        $acked++ if signed($ben, 'DELETE', "/kmdc/mailbox/$ben->{serial}/$id")->code == 204;
    }
}
is($fetched, $runs, "the $runs deliveries fetched: 200");
is($acked, $runs, '... and acknowledged: 204');

# the module's statements: those of this database that are not psql's own
my $rows = sql(qq{SELECT s.calls || ' ' || s.plans || ' '
                 || regexp_replace(left(s.query, 70), '\\s+', ' ', 'g')
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                 WHERE d.datname = current_database() AND s.calls >= $runs
                 AND s.query !~* 'pg_stat_statements'
                 ORDER BY s.calls DESC, s.query});
my @stmts = map { [ split / /, $_, 3 ] } grep { length } split /\n/, $rows;
cmp_ok(scalar @stmts, '>=', 5, 'pg_stat_statements saw the statements of relays, '
       . 'listings, fetches and acknowledgements') or diag($rows);
my ($listing, $relay) = (0, 0);
for my $s (@stmts) {
    my ($calls, $plans, $sql) = @$s;
    $listing++ if $sql =~ /^SELECT c\.down_next, d\.id/;
    $relay++ if $sql =~ /^WITH k AS \(UPDATE cards/;
    # a plan per connection at most; custom plans would be one per call
    cmp_ok($plans * 4, '<=', $calls, "planned $plans times for $calls runs: $sql");
}
is($listing, 1, 'the mailbox listing was among them');
is($relay, 1, "the relay's publication was among them");

done_testing();
