# t/046_stall.t - nothing is held before an upload authenticates: uploads
# that stall before their keyblock is complete take no database connection,
# so they cannot starve the others.
#
# 3 x KmdcDbPoolMax connections send POST {location}/send headers announcing
# 100000 bytes and stop; as many again send their headers and exactly the
# 44-byte prefix (header and kb_len, no keyblock byte) of a real envelope of
# an active card, and stop.  While they stall, GET /health answers 200 and
# another envelope of that same card is relayed (201), each within 2 s.
# Then the stalled connections are closed and nothing is left behind.
#
# The Apache::Test server runs the event MPM with its defaults (its generated
# httpd.conf sets threads only for the worker MPM): 3 children of 25 threads
# at start, up to 400 workers, so the stalled connections and the probes all
# have a thread; KmdcDbPool 1 4 (t/conf/extra.conf.in) gives each child 4
# database connections.  The stalls end well before mod_reqtimeout's body
# timeout (20 s).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Select ();
use LWP::UserAgent ();
use Time::HiRes qw(time sleep);
use KmdcClient qw(sql document path base_url wait_until slurp);
use KmdcIntake qw(:all);

for my $v (qw(KMDC_SUITE_URL KMDC_BUILD KMDC_MASTER_KEY_FILE PGHOST)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $BOUND = 2;                   # seconds a probe may take
my $n = 3 * pool_max();          # stalled connections of each kind
my ($host, $port) = server_addr();
my $ua = LWP::UserAgent->new(timeout => 15, keep_alive => 0);

# The server's busy and idle workers (mod_status, which Apache::Test loads).
sub workers {
    my $res = $ua->get("http://$host:$port/server-status?auto");
    return (undef, undef) unless $res->is_success;
    my ($busy) = $res->decoded_content =~ /^BusyWorkers:\s*(\d+)/m;
    my ($idle) = $res->decoded_content =~ /^IdleWorkers:\s*(\d+)/m;
    return ($busy, $idle);
}

my $card = issue('st-sender');
my $rcpt = issue('st-rcpt');
my $doc = document(path('.doc'), 5000);
my $stalled_env = seal($card, 'st-rcpt', $doc);     # its prefix stalls
my $probe_env = seal($card, 'st-rcpt', $doc);       # relayed while they stall
my $prefix = substr(slurp($stalled_env), 0, 44);
my $env_len = -s $stalled_env;
my $base_uploads = orphan_uploads();

{
    my ($busy, $idle) = workers();
    diag(sprintf('before the stalls: %s busy and %s idle workers; %d stalled connections '
                 . 'and 2 probes follow', $busy // '?', $idle // '?', 2 * $n));
}

my @socks;
push @socks, raw_open(http_head(100000)) for 1 .. $n;
push @socks, raw_open(http_head($env_len) . $prefix) for 1 .. $n;
is(scalar @socks, 2 * $n, "$n connections stall after their headers, $n after a 44-byte prefix");

# Let every stalled request reach the handler (each keeps a worker reading).
my $settled = wait_until(10, sub { my ($b) = workers(); defined $b && $b >= 2 * $n + 1 });
diag('the stalled requests did not all show as busy workers within 10 s') unless $settled;
sleep 0.5;

{
    my $t0 = time;
    my $res = $ua->get(base_url() . '/health');
    my $secs = time - $t0;
    is($res->code, 200, 'while they stall, GET /health answers 200')
        or diag($res->status_line . ' ' . $res->decoded_content);
    ok($secs < $BOUND, "while they stall, GET /health answers within $BOUND s")
        or diag(sprintf('it took %.2f s', $secs));
}
{
    my $res = post_envelope($probe_env, max_time => 15);
    is($res->{code}, 201, 'while they stall, an envelope of the same card is relayed (201)')
        or diag("$res->{body} $res->{err}");
    ok($res->{secs} < $BOUND, "while they stall, the relay answers within $BOUND s")
        or diag(sprintf('it took %.2f s', $res->{secs}));
}
is(live_leases(), 0, 'while they stall, no upload slot is taken');
is(orphan_uploads(), $base_uploads, 'while they stall, no unpublished upload row exists');

# none of the stalled requests has been answered: each still waits for bytes
{
    my @answered = grep { IO::Select->new($_)->can_read(0) } @socks;
    is(scalar @answered, 0, 'the stalled requests are still waiting (none was answered)');
}

close $_ for @socks;
@socks = ();

# the server is clean afterwards: the probe's counter is spent, the stalled
# envelope's is not (it never arrived whole), no upload rows are left
is(up_next($card), envelope_seq($probe_env) + 1,
   'afterwards the card\'s up_next is past the relayed envelope only');
ok(wait_until(10, sub { orphan_uploads() == $base_uploads
                        && live_leases() == 0 }),
   'afterwards no unpublished upload row or slot is left');
my ($rc, $d, $files) = fetch_all($rcpt);
ok($rc == 0 && @$files == 1 && KmdcClient::same("$d/$files->[0]", $doc),
   'the recipient fetches the relayed document byte for byte') or diag("files: @$files");

done_testing();

END { close $_ for @socks }
