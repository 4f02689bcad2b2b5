# t/080_cluster.t - the service under stress: two httpd front-ends (event MPM,
# the built module) sharing one database, eight senders in parallel, the
# database stopped and restarted in the middle of a run, and a master key
# rotation (kmdcadm rekey) under load followed by the old key's removal.
#
# Every sender is its own process driving the real `kmdc send`, alternating
# between the two front-ends, to a shared recipient (hub) and to the other
# senders; some receivers fetch while they send.  After each phase every card
# fetches with `kmdc fetch` and the test checks: every document arrived
# exactly once and byte for byte, each mailbox's delivery seqs are 0..n-1,
# each card's up_next (database and card file) equals the envelopes it
# sealed, one receipt per envelope, every answer a success, no request slow
# (no deadlock), no upload left over, nothing in an outbox.
#
# Phases: parallel (80 sends); outage (PostgreSQL stopped with pg_ctl -m fast
# while the senders run: 503 and exit 6, then started again: the outboxes
# drain); idle restart (a restart while the pools are idle: the first
# request afterwards must not fail on a dead pooled connection, a TODO for
# now); rekey (key 2 added with a graceful restart, kmdcadm rekey while the
# senders run, rekey --check, key 1 dropped and its file removed); after
# rekey (sending goes on with key 2 only).
#
# The test uses its own database (kmdc_cluster) in the suite's PostgreSQL
# cluster and its own master keys, so the rekey and `rekey --check` see only
# its cards.  Stopping PostgreSQL stops the cluster the whole suite uses: it
# is started again on the same port (also in END if the test dies), and the
# Apache::Test server is restarted gracefully afterwards so that the rest of
# the suite does not meet the connections the restart killed.
# Logs and configurations: t/logs/080_cluster/{a,b,c}/.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp qw(tempdir);
use Digest::SHA qw(sha256_hex);
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(sleep time);
use KmdcCluster qw(:all);

for my $v (qw(KMDC_BUILD KMDC_MODULE KMDC_SRCDIR PGHOST PGPORT PGUSER)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $build = $ENV{KMDC_BUILD};
my $kmdc = "$build/kmdc/kmdc";
my $kmdcadm = "$build/admin/kmdcadm";
my $db = 'kmdc_cluster';
my $root = File::Spec->rel2abs('t/logs/080_cluster');
my $work = tempdir('kmdc-cluster-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $work;
my $json = JSON::PP->new;

my $NSENDERS = 8;
my $SLOW = 5;            # seconds: a send that takes longer is a failure

remove_tree($root);
make_path($root);
chmod 0755, $root;

# ---- setup: database, keys, two front-ends ---------------------------------------

my $conninfo = create_db($db);
my $key1 = keygen("$work/master-1.key");
my $key2 = "$work/master-2.key";

my ($port_a, $port_b) = (free_port(), free_port());
$port_b = free_port() while $port_b == $port_a;
my %url = (a => "http://127.0.0.1:$port_a/kmdc", b => "http://127.0.0.1:$port_b/kmdc");

sub body_for {
    my (@keys) = @_;
    my $k = join '', map { qq{KmdcMasterKey $_->[0] "$_->[1]"\n} } @keys;
    return <<"EOF";
KmdcDatabase "$conninfo"
${k}KmdcDbPool 1 4
<Location /kmdc>
    SetHandler kmdc
</Location>
EOF
}

my %httpd;
for my $n ('a', 'b') {
    my $port = $n eq 'a' ? $port_a : $port_b;
    $httpd{$n} = httpd_start(dir => "$root/$n", listen => ["127.0.0.1:$port"],
                             probe => "$url{$n}/health", body => body_for([1, $key1]));
}
ok($httpd{a}{started} && $httpd{b}{started},
   'setup: two httpd instances (event MPM, the built module) share one database')
    or diag($httpd{a}{log} . $httpd{b}{log});
BAIL_OUT('the front-ends did not start') unless $httpd{a}{started} && $httpd{b}{started};
{
    my ($ca, $ba) = http_get("$url{a}/health");
    my ($cb, $bb) = http_get("$url{b}/health");
    ok($ca == 200 && $cb == 200 && $ba =~ /"status":"ok"/ && $bb =~ /"status":"ok"/,
       'setup: /health answers 200 on both front-ends') or diag("a: $ca $ba\nb: $cb $bb");
}

# ---- cards ------------------------------------------------------------------------

my @senders = map { "s$_" } 0 .. $NSENDERS - 1;
my %card;
{
    my $ok = 1;
    for my $addr (@senders, 'hub') {
        my $c = issue(db => $conninfo, keys => ["1:$key1"], url => $url{a},
                      address => $addr, file => "$work/$addr.card");
        my ($rc, $out) = run($kmdc, '--card', $c->{file}, '--url',
                             $url{ $addr =~ /[1357]$/ ? 'b' : 'a' }, 'activate', $c->{code});
        if ($rc) {
            $ok = 0;
            diag("activate $addr: $rc $out");
        }
        $card{$addr} = $c;
    }
    ok($ok, 'cards: 8 senders and a shared recipient issued and activated (through both '
       . 'front-ends)');
}

# ---- documents and expectations ----------------------------------------------------

my %sealed;     # document name => {from, to => [addresses]}
my %received;   # address => {name => times}
my @msgids;     # message ids printed by kmdc send

# A small document whose bytes follow from its name.
sub content {
    my ($name) = @_;
    my $n = 200 + (unpack('%32C*', $name) % 1800);
    my $line = "$name: the quick brown fox jumps over the lazy dog\n";
    return substr($line x (1 + int($n / length $line)), 0, $n);
}

sub doc_file {
    my ($dir, $name) = @_;
    my $path = "$dir/$name";
    spew($path, content($name)) unless -e $path;
    return $path;
}

# The plan of sender i in a phase: k documents, alternately through a and
# b, to hub, to a peer, or to both.
sub plan_for {
    my ($i, $tag, $k) = @_;
    my @p;
    for my $m (0 .. $k - 1) {
        my $peer = 's' . (($i + 1 + $m % ($NSENDERS - 1)) % $NSENDERS);
        my @to = $m % 3 == 0 ? ('hub') : $m % 3 == 1 ? ($peer) : ('hub', $peer);
        push @p, { name => "$tag-s$i-m$m.txt", to => \@to, via => $m % 2 ? 'b' : 'a' };
    }
    return \@p;
}

# One sender, in a child process: send every document of @$plan with kmdc
# send, retrying (after $o{retry} s) what kmdc reports as passing (exit 6).
# A document counts as sealed when the card's up_next moved; a passing
# failure after that leaves it in the outbox, which the next kmdc send
# uploads first.  When the last document stays in the outbox a "flush"
# document is sent after it.  Writes one JSON line per attempt to $log.
sub sender {
    my ($addr, $plan, $log, %o) = @_;
    my $dir = "$work/docs-$addr";
    mkdir $dir;
    open my $lf, '>', $log or POSIX::_exit(1);
    $lf->autoflush(1);
    my @queue = @$plan;
    my $deadline = time + ($o{deadline} // 60);
    my $flushes = 0;
    my $pending = 0;
    while ((@queue || $pending) && time < $deadline) {
        if (!@queue) {
            push @queue, { name => "$o{tag}-$addr-flush$flushes.txt", to => ['hub'],
                           via => $flushes % 2 ? 'b' : 'a' };
            $flushes++;
        }
        my $d = $queue[0];
        my $before = card_info($kmdc, $card{$addr}{file});
        my ($rc, $out, $secs) = timed($kmdc, '--card', $card{$addr}{file}, '--url',
                                      $url{ $d->{via} }, 'send', '--to', join(',', @{ $d->{to} }),
                                      '--name', $d->{name}, doc_file($dir, $d->{name}));
        my $after = card_info($kmdc, $card{$addr}{file});
        my $moved = $before && $after ? $after->{up_next} - $before->{up_next} : -1;
        my @ids = $out =~ /^([0-9a-f]{16}) \d+ /mg;
        print {$lf} $json->encode({ name => $d->{name}, to => $d->{to}, via => $d->{via},
                                    rc => $rc, secs => $secs, moved => $moved,
                                    outbox => $after ? $after->{outbox} : -1,
                                    ids => \@ids, t => time, out => $out }), "\n";
        $pending = $after && $after->{outbox} > 0 ? 1 : 0;
        if ($rc == 0 || $moved == 1) {
            shift @queue;
        } elsif ($rc != 6) {
            shift @queue;     # a final failure: recorded, the test fails on it
        }
        sleep($rc == 0 ? ($o{pause} // 0) : ($o{retry} // 0.3));
    }
    close $lf;
}

# Start one sender process per address; returns {addr => {pid, log}}.
sub start_senders {
    my ($tag, $k, %o) = @_;
    my %s;
    for my $i (0 .. $NSENDERS - 1) {
        my $addr = $senders[$i];
        my $log = "$work/$tag-$addr.log";
        my $plan = plan_for($i, $tag, $k);
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            sender($addr, $plan, $log, %o, tag => $tag);
            POSIX::_exit(0);    # no END blocks (they stop the httpds) in a child
        }
        $s{$addr} = { pid => $pid, log => $log };
    }
    return \%s;
}

# Wait for the senders and read their logs: a list of attempts, each with
# from set.  Also records what was sealed and the message ids printed.
sub finish_senders {
    my ($s, $timeout) = @_;
    my $deadline = time + ($timeout // 120);
    my @att;
    for my $addr (sort keys %$s) {
        my $pid = $s->{$addr}{pid};
        while (waitpid($pid, POSIX::WNOHANG()) == 0) {
            if (time > $deadline) {
                kill 'KILL', $pid;
                waitpid($pid, 0);
                diag("sender $addr did not finish in time: killed");
                last;
            }
            sleep 0.1;
        }
        for my $line (split /\n/, slurp($s->{$addr}{log})) {
            my $a = $json->decode($line);
            $a->{from} = $addr;
            push @att, $a;
            $sealed{ $a->{name} } = { from => $addr, to => $a->{to} } if $a->{moved} == 1;
            push @msgids, @{ $a->{ids} };
        }
    }
    return \@att;
}

# Send one document from the parent (a probe): the attempt as sender() logs it.
sub send_one {
    my ($addr, $name, $to, $via) = @_;
    my $dir = "$work/docs-$addr";
    mkdir $dir;
    my $before = card_info($kmdc, $card{$addr}{file});
    my ($rc, $out, $secs) = timed($kmdc, '--card', $card{$addr}{file}, '--url', $url{$via},
                                  'send', '--to', join(',', @$to), '--name', $name,
                                  doc_file($dir, $name));
    my $after = card_info($kmdc, $card{$addr}{file});
    my $moved = $after->{up_next} - $before->{up_next};
    $sealed{$name} = { from => $addr, to => $to } if $moved == 1;
    my @ids = $out =~ /^([0-9a-f]{16}) \d+ /mg;
    push @msgids, @ids;
    return { rc => $rc, out => $out, secs => $secs, moved => $moved, ids => \@ids,
             outbox => $after->{outbox} };
}

# Receivers that fetch while the senders send: one child per address
# running kmdc fetch into its own folder until $stop exists (then once
# more).  Returns {addr => {pid, log, dir}}.
sub start_fetchers {
    my ($tag, $stop, @addrs) = @_;
    my %f;
    my $i = 0;
    for my $addr (@addrs) {
        my $dir = "$work/live-$tag-$addr";
        mkdir $dir or die "$dir: $!";
        my $log = "$work/live-$tag-$addr.log";
        my $via = $i++ % 2 ? 'b' : 'a';
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open my $lf, '>', $log or POSIX::_exit(1);
            $lf->autoflush(1);
            my $deadline = time + 120;
            my $last = 0;
            while (!$last && time < $deadline) {
                $last = -e $stop;
                my ($rc, $out, $secs) = timed($kmdc, '--card', $card{$addr}{file}, '--url',
                                              $url{$via}, 'fetch', '-d', $dir);
                print {$lf} $json->encode({ rc => $rc, secs => $secs, out => $out }), "\n";
                sleep 0.2 unless $last;
            }
            close $lf;
            POSIX::_exit(0);
        }
        $f{$addr} = { pid => $pid, log => $log, dir => $dir };
    }
    return \%f;
}

# Stop the fetchers, add what they received to %received; the problems.
sub finish_fetchers {
    my ($f, $stop) = @_;
    spew($stop, '');
    my @bad;
    my $n = 0;
    for my $addr (sort keys %$f) {
        waitpid($f->{$addr}{pid}, 0);
        for my $line (split /\n/, slurp($f->{$addr}{log})) {
            my $a = $json->decode($line);
            $n++;
            push @bad, "$addr: kmdc fetch exit $a->{rc}: $a->{out}" if $a->{rc};
            push @bad, sprintf('%s: kmdc fetch took %.1f s', $addr, $a->{secs})
                if $a->{secs} > $SLOW;
        }
        my $d = $f->{$addr}{dir};
        opendir my $dh, $d or die;
        for my $name (sort grep { !/^\./ } readdir $dh) {
            $received{$addr}{$name}++;
            push @bad, "$addr: $name differs from what was sent"
                if slurp("$d/$name") ne content($name);
        }
    }
    return ($n, @bad);
}

# Every card fetches (alternately through a and b); the documents it
# receives are added to %received.  Returns the problems found (a list).
sub fetch_all {
    my ($tag) = @_;
    my @bad;
    my $i = 0;
    for my $addr (@senders, 'hub') {
        my $d = "$work/in-$tag-$addr";
        mkdir $d or die "$d: $!";
        my ($rc, $out, $secs) = timed($kmdc, '--card', $card{$addr}{file}, '--url',
                                      $url{ $i++ % 2 ? 'b' : 'a' }, 'fetch', '-d', $d);
        push @bad, "$addr: kmdc fetch exit $rc: $out" if $rc;
        push @bad, sprintf('%s: kmdc fetch took %.1f s', $addr, $secs) if $secs > 2 * $SLOW;
        opendir my $dh, $d or die;
        for my $f (sort grep { !/^\./ } readdir $dh) {
            $received{$addr}{$f}++;
            push @bad, "$addr: $f differs from what was sent"
                if slurp("$d/$f") ne content($f);
        }
    }
    return @bad;
}

# Every sealed document reached each of its recipients exactly once and no
# other document arrived.  Returns the problems (a list).
sub delivery_problems {
    my %want;
    for my $name (keys %sealed) {
        $want{$_}{$name}++ for @{ $sealed{$name}{to} };
    }
    my @bad;
    for my $addr (@senders, 'hub') {
        my %w = %{ $want{$addr} // {} };
        my %g = %{ $received{$addr} // {} };
        for my $n (sort keys %w) {
            my $got = $g{$n} // 0;
            push @bad, "$addr: $n arrived $got times" if $got != 1;
        }
        for my $n (sort keys %g) {
            push @bad, "$addr: unexpected $n (x$g{$n})" unless $w{$n};
        }
    }
    return @bad;
}

# The database's view: per card, deliveries seq 0..down_next-1 without gap
# or duplicate, receipts 0..up_next-1, up_next = sealed envelopes; every
# receipt a success; every delivery acknowledged; no upload left over.
sub db_problems {
    my @bad;
    my %count;
    $count{ $sealed{$_}{from} }++ for keys %sealed;
    my %info;
    for my $row (split /\n/, sql($db, q{
            SELECT c.address, c.up_next, c.down_next,
                   (SELECT count(*) || ':' || count(DISTINCT seq) || ':'
                           || coalesce(min(seq), 0) || ':' || coalesce(max(seq), -1)
                      FROM deliveries d WHERE d.recipient = c.serial),
                   (SELECT count(*) || ':' || count(DISTINCT seq) || ':'
                           || coalesce(min(seq), 0) || ':' || coalesce(max(seq), -1)
                      FROM receipts r WHERE r.serial = c.serial),
                   (SELECT count(*) FROM deliveries d
                     WHERE d.recipient = c.serial AND d.state <> 'delivered')
              FROM cards c ORDER BY c.address})) {
        my ($addr, $up, $down, $dl, $rc, $open) = split /\|/, $row;
        my ($dn, $dd, $dmin, $dmax) = split /:/, $dl;
        my ($rn, $rd, $rmin, $rmax) = split /:/, $rc;
        push @bad, "$addr: deliveries $dl, down_next $down"
            unless $dn == $down && $dd == $down && ($down == 0 || ($dmin == 0 && $dmax == $down - 1));
        push @bad, "$addr: receipts $rc, up_next $up"
            unless $rn == $up && $rd == $up && ($up == 0 || ($rmin == 0 && $rmax == $up - 1));
        push @bad, "$addr: up_next $up, sealed " . ($count{$addr} // 0)
            unless $up == ($count{$addr} // 0);
        push @bad, "$addr: $open deliveries not acknowledged" if $open;
        my $ci = card_info($kmdc, $card{$addr}{file});
        push @bad, "$addr: the card file says up_next $ci->{up_next}, the database $up"
            unless $ci && $ci->{up_next} == $up;
        push @bad, "$addr: the card file says down_next $ci->{down_next}, the database $down"
            unless $ci && $ci->{down_next} == $down;
        push @bad, "$addr: $ci->{outbox} envelope(s) left in the outbox"
            unless $ci && $ci->{outbox} == 0;
    }
    my $bad_receipts = sql($db, 'SELECT count(*) FROM receipts WHERE http_status NOT IN (200, 201)');
    push @bad, "$bad_receipts receipts record a failure" if $bad_receipts;
    my $orphans = sql($db, 'SELECT count(*) FROM uploads u WHERE NOT EXISTS '
                      . '(SELECT 1 FROM messages m WHERE m.upload_id = u.id)');
    push @bad, "$orphans upload rows belong to no message" if $orphans;
    # every delivery was acknowledged: no payload may be left, in an upload
    # or in the message's own row (schema 6)
    my $kept = sql($db, 'SELECT count(*) FROM messages m WHERE (m.payload IS NOT NULL '
                   . 'OR m.upload_id IS NOT NULL) AND NOT EXISTS (SELECT 1 FROM deliveries d '
                   . "WHERE d.message_id = m.id AND d.state = 'queued')");
    push @bad, "$kept messages with no queued delivery still hold their payload" if $kept;
    my $messages = sql($db, 'SELECT count(*) FROM messages');
    push @bad, "$messages messages in the database, " . scalar(keys %sealed) . ' sealed'
        unless $messages == keys %sealed;
    my %ids = map { $_ => 1 } @msgids;
    push @bad, scalar(keys %ids) . " distinct message ids printed by kmdc send, $messages "
        . 'messages' unless keys %ids == $messages;
    return @bad;
}

# The checks that end each phase: 5 tests.
sub check_all {
    my ($tag) = @_;
    my @f = fetch_all($tag);
    ok(!@f, "$tag: every card fetches with kmdc fetch, documents byte for byte")
        or diag(join "\n", @f);
    my @d = delivery_problems();
    ok(!@d, "$tag: every document reached each recipient exactly once ("
       . scalar(keys %sealed) . ' documents)') or diag(join "\n", @d[0 .. ($#d < 30 ? $#d : 30)]);
    my @b = db_problems();
    ok(!@b, "$tag: database: delivery seqs 0..n-1 per mailbox, one receipt per envelope, "
       . 'up_next = envelopes sealed (database and card file), all acknowledged')
        or diag(join "\n", @b[0 .. ($#b < 30 ? $#b : 30)]);
    my $dead = () = pg_log() =~ /deadlock detected/g;
    is($dead, 0, "$tag: PostgreSQL logged no deadlock");
    my @crash = grep { /exit signal|Segmentation|AddressSanitizer/ }
        map { split /\n/, slurp("$root/$_/error_log") } 'a', 'b';
    ok(!@crash, "$tag: no httpd child crashed") or diag(join "\n", @crash);
}

sub summary {
    my ($att) = @_;
    my %rc;
    $rc{ $_->{rc} }++ for @$att;
    my $max = 0;
    for (@$att) { $max = $_->{secs} if $_->{rc} == 0 && $_->{secs} > $max }
    return (\%rc, $max);
}

sub rc_text {
    my ($rc) = @_;
    return join(', ', map { "exit $_: $rc->{$_}" } sort keys %$rc);
}

sub failures_text {
    my ($att, $pred) = @_;
    my @l = map { "$_->{from} $_->{name} via $_->{via}: exit $_->{rc}, moved $_->{moved}, "
                  . sprintf('%.2f s', $_->{secs}) . ": $_->{out}" } grep { $pred->($_) } @$att;
    return join "\n", @l[0 .. ($#l < 20 ? $#l : 20)];
}

# ---- phase 1: 8 senders in parallel ---------------------------------------------------

my $K1 = 10;
{
    my $t0 = time;
    my $stop = "$work/p1.stop";
    my $f = start_fetchers('p1', $stop, 'hub', 's0', 's5');
    my $s = start_senders('p1', $K1);
    my $att = finish_senders($s, 120);
    my ($nf, @fbad) = finish_fetchers($f, $stop);
    ok($nf >= 6 && !@fbad, "parallel: hub, s0 and s5 fetched $nf times while the senders "
       . 'sent, every fetch exit 0') or diag(join "\n", @fbad);
    my $elapsed = time - $t0;
    my ($rc, $max) = summary($att);
    is(scalar(@$att), $NSENDERS * $K1, "parallel: $NSENDERS senders made "
       . $NSENDERS * $K1 . ' kmdc send calls') or diag(rc_text($rc));
    is($rc->{0} // 0, $NSENDERS * $K1, 'parallel: every kmdc send exits 0 at the first try')
        or diag(failures_text($att, sub { $_[0]{rc} != 0 }));
    ok(!grep({ $_->{moved} != 1 } @$att), 'parallel: each send sealed exactly one envelope');
    my %via;
    $via{ $_->{via} }++ for @$att;
    ok(($via{a} // 0) == $NSENDERS * $K1 / 2 && ($via{b} // 0) == $NSENDERS * $K1 / 2,
       'parallel: half of the sends went through each front-end');
    ok($max < $SLOW, sprintf('parallel: no send took %d s or more (slowest %.2f s; '
                             . 'no deadlock)', $SLOW, $max));
    my @multi = grep { @{ $_->{to} } == 2 } @$att;
    my @ids = map { @{ $_->{ids} } } @$att;
    is(scalar(@ids), $NSENDERS * $K1, 'parallel: kmdc send printed one message id per document');
    ok(@multi > 0 && sql($db, 'SELECT count(*) FROM messages m WHERE (SELECT count(*) FROM '
                          . 'deliveries d WHERE d.message_id = m.id) = 2') == @multi,
       'parallel: the documents to hub and a peer have two deliveries each');
    diag(sprintf('phase 1: %d sends in %.1f s', scalar(@$att), $elapsed));
    is(sql($db, 'SELECT count(*) FROM receipts'), $NSENDERS * $K1,
       'parallel: receipts count = sends');
}
check_all('parallel');

# ---- phase 2: the database stopped and started during a run --------------------------

my $K2 = 8;
{
    my $base = sql($db, 'SELECT count(*) FROM messages');
    my $s = start_senders('p2', $K2, pause => 0.15, retry => 0.3, deadline => 90);
    # let the run get going
    my $deadline = time + 30;
    while (time < $deadline && sql($db, 'SELECT count(*) FROM messages') < $base + $NSENDERS) {
        sleep 0.05;
    }
    ok(sql($db, 'SELECT count(*) FROM messages') >= $base + $NSENDERS,
       'outage: the senders are running before the database stops');
    my $t_stop = time;
    ok(pg_stop(), 'outage: PostgreSQL stopped (pg_ctl -m fast)');

    my @h;
    for my $n ('a', 'b') {
        my ($code, $body, $crc, $hdr) = http_get("$url{$n}/health");
        push @h, [$code, $body, $hdr];
    }
    ok($h[0][0] == 503 && $h[1][0] == 503, 'outage: /health answers 503 on both front-ends')
        or diag(join "\n", map { "$_->[0] $_->[1]" } @h);
    my $hb = eval { $json->decode($h[0][1]) };
    ok(ref $hb eq 'HASH' && ($hb->{error} // '') eq 'unavailable'
       && $h[0][2] =~ /^Retry-After:\s*\d+\r?$/mi,
       'outage: the 503 is {"error":"unavailable"} with Retry-After')
        or diag("$h[0][1]\n$h[0][2]");

    # a probe from hub: refused as passing, the envelope kept in the outbox
    my $p = send_one('hub', 'p2-hub-probe.txt', ['s0'], 'b');
    is($p->{rc}, 6, 'outage: kmdc send exits 6 (server unavailable) while the database is down')
        or diag($p->{out});
    ok($p->{moved} == 1 && $p->{outbox} == 1,
       'outage: the sealed envelope waits in the outbox of the card')
        or diag("moved $p->{moved}, outbox $p->{outbox}");
    like($p->{out}, qr/503|unavailable/i, 'outage: kmdc says the datacenter is unavailable');
    my $hi = card_info($kmdc, $card{hub}{file});
    my $entry = $hi && $hi->{outbox_entry} ? "$card{hub}{file}.outbox/$hi->{outbox_entry}.kmdc"
                                            : '';
    my $kept = $entry ne '' ? slurp($entry) : '';
    ok(length $kept > 0, 'outage: the outbox entry is a file beside the card')
        or diag("entry '$entry': " . join(' ', %{ $hi // {} }));

    # a receiver too: a signed request needs the database (its nonce)
    {
        my $before = card_info($kmdc, $card{hub}{file});
        my $d = "$work/probe-outage-hub";
        mkdir $d;
        my ($frc, $fout) = run($kmdc, '--card', $card{hub}{file}, '--url', $url{a},
                               'fetch', '-d', $d);
        my $after = card_info($kmdc, $card{hub}{file});
        opendir my $dh, $d or die;
        my @f = grep { !/^\./ } readdir $dh;
        ok($frc == 6 && !@f && $after->{down_next} == $before->{down_next},
           'outage: kmdc fetch exits 6, writes nothing and leaves the card as it was')
            or diag("exit $frc: $fout");
    }

    sleep 1.5 while time - $t_stop < 3;     # the senders run into the outage
    my $t_start = time;
    ok(pg_start(), 'outage: PostgreSQL started again on the same port');
    my %back;
    $deadline = time + 30;
    while (time < $deadline && keys %back < 2) {
        for my $n ('a', 'b') {
            next if $back{$n};
            my ($code) = http_get("$url{$n}/health");
            $back{$n} = time - $t_start if $code == 200;
        }
        sleep 0.1 if keys %back < 2;
    }
    ok(keys %back == 2, sprintf('outage: both front-ends answer 200 again by themselves '
                                . '(after %.1f s and %.1f s)', $back{a} // -1, $back{b} // -1));

    my $att = finish_senders($s, 120);
    # Dead connections may still sit in the pools (see "idle restart" below,
    # a TODO): start fresh ones so that the checks below do not depend on it.
    ok(httpd_graceful($httpd{a}, undef) && httpd_graceful($httpd{b}, undef),
       'outage: both front-ends restarted gracefully (fresh database pools)');
    my ($rc) = summary($att);
    my @during = grep { $_->{t} > $t_stop && $_->{t} < $t_start } @$att;
    ok((grep { $_->{rc} == 6 } @$att) > 0 && @during > 0,
       'outage: senders ran into the outage and got exit 6: ' . rc_text($rc));
    ok(!grep({ $_->{rc} != 0 && $_->{rc} != 6 } @$att),
       'outage: no answer but success or "unavailable, retry" (exit 6)')
        or diag(failures_text($att, sub { $_[0]{rc} != 0 && $_[0]{rc} != 6 }));
    my %left;
    for (@$att) { $left{ $_->{from} } = $_ }
    ok(!grep({ $_->{rc} != 0 || $_->{outbox} != 0 } values %left),
       'outage: every sender ends with exit 0 and an empty outbox (the retries went through)')
        or diag(failures_text([values %left], sub { 1 }));
    my $all_sealed = 1;
    for my $i (0 .. $NSENDERS - 1) {
        for my $m (0 .. $K2 - 1) {
            $all_sealed = 0 unless $sealed{"p2-s$i-m$m.txt"};
        }
    }
    ok($all_sealed, 'outage: every planned document was sealed');
    my $kept_by_senders = grep { $_->{rc} == 6 && $_->{moved} == 1 } @$att;
    ok($kept_by_senders > 0, "outage: $kept_by_senders sender envelopes were sealed, kept in "
       . 'the outbox by the outage and uploaded by a later kmdc send');

    # hub's next send uploads the probe first, byte for byte
    my $r = send_one('hub', 'p2-hub-after.txt', ['s0', 'hub'], 'a');
    is($r->{rc}, 0, 'outage: the next kmdc send of hub exits 0') or diag($r->{out});
    ok(@{ $r->{ids} } == 2 && $r->{out} =~ /^[0-9a-f]{16} 1 outbox:/m && $r->{outbox} == 0,
       'outage: it uploaded the kept envelope first, then the new one') or diag($r->{out});
    my $ra = sql($db, q{SELECT count(*) FROM receipts r JOIN cards c ON c.serial = r.serial
                         WHERE c.address = 'hub'});
    is($ra, 2, 'outage: hub has one receipt per envelope (the probe was not sealed twice)');
    my $seq = $hi && $hi->{outbox_entry} ? hex($hi->{outbox_entry}) : -1;
    is(sql($db, "SELECT encode(envelope_sha256, 'hex') FROM receipts WHERE serial = "
           . "x'$card{hub}{serial}'::bigint AND seq = $seq"), sha256_hex($kept),
       'outage: the kept envelope was uploaded byte for byte (its SHA-256 is the receipt\'s)');
    my @ok_again = grep {
        my $log = slurp("$root/$_/error_log");
        my $down = index($log, 'kmdc: the database (KmdcDatabase) cannot be used: ');
        my $back = rindex($log, 'kmdc: the database is available again');
        $down >= 0 && $back > $down;
    } 'a', 'b';
    is(scalar(@ok_again), 2, 'outage: each front-end logged the outage and "the database '
       . 'is available again"');

    # An upload in flight when the database went away could not drop its rows
    # (the intake leaves them to kmdcadm purge, which takes an upload whose
    # last batch is older than --upload-age, at least 10m): age them, purge.
    my $orphaned = q{FROM uploads u WHERE NOT EXISTS
                     (SELECT 1 FROM messages m WHERE m.upload_id = u.id)};
    my $n_orph = sql($db, "SELECT count(*) $orphaned");
    sql($db, "UPDATE uploads SET created_at = created_at - interval '2 hours', "
        . "touched_at = touched_at - interval '2 hours' WHERE id IN (SELECT u.id $orphaned)");
    my ($prc, $pout) = run($kmdcadm, '--db', $conninfo, 'purge');
    ok($prc == 0 && sql($db, "SELECT count(*) $orphaned") == 0,
       "outage: kmdcadm purge removes the $n_orph upload(s) the outage left behind")
        or diag($pout);
}
check_all('outage');

# ---- a restart while every connection is idle ----------------------------------------
# docs/_parts/directives.md: "A connection the server closed while it was idle
# (a PostgreSQL restart) is noticed before use and reconnected".  So once the
# database is back, no request may fail on a pooled connection that died.

# Requests to /health until $want answered 200 in a row: the 503s before.
sub flush_health {
    my ($base, $want, $max) = @_;
    my ($row, $n503, $other) = (0, 0, 0);
    for (1 .. $max) {
        my ($code) = http_get("$base/health");
        if ($code == 200) {
            $row++;
            last if $row >= $want;
        } else {
            $row = 0;
            $code == 503 ? $n503++ : $other++;
        }
    }
    return ($row >= $want, $n503, $other);
}

{
    my $suite_url = $ENV{KMDC_SUITE_URL};
    # a third front-end with one child and one pooled connection: after a
    # request, the connection the next request uses is known to be idle
    my $port_c = free_port();
    my $url_c = "http://127.0.0.1:$port_c/kmdc";
    (my $body_c = body_for([1, $key1])) =~ s/KmdcDbPool 1 4/KmdcDbPool 1 1/;
    my $c = httpd_start(dir => "$root/c", listen => ["127.0.0.1:$port_c"], servers => 1,
                        threads => 4, probe => "$url_c/health", body => $body_c);
    # kmdc fetch of an empty mailbox: signed GET /mailbox (nonce, listing)
    my $n_fetch = 0;
    my $fetch_c = sub {
        my $d = "$work/idle-restart-" . $n_fetch++;
        mkdir $d or die "$d: $!";
        my ($rc, $out) = run($kmdc, '--card', $card{hub}{file}, '--url', $url_c, 'fetch',
                             '-d', $d);
        opendir my $dh, $d or die;
        $received{hub}{$_}++ for grep { !/^\./ } readdir $dh;
        return ($rc, $out);
    };
    my ($wrc, $wout) = $c->{started} ? $fetch_c->() : (-1, $c->{log});
    flush_health($url{$_}, 8, 40) for 'a', 'b';
    ok($wrc == 0, 'idle restart: a front-end with one child and KmdcDbPool 1 1 serves '
       . 'kmdc fetch') or diag($wout);
    ok(pg_stop() && pg_start(), 'idle restart: PostgreSQL stopped and started again');
    my $ready = 0;
    for (1 .. 100) {
        my ($rc) = run('psql', '-XAtq', '-d', $db, '-c', 'SELECT 1');
        if ($rc == 0) {
            $ready = 1;
            last;
        }
        sleep 0.1;
    }
    my ($frc, $fout) = $fetch_c->();
    ok($ready && $frc == 0, 'idle restart: once the database is back, the first request '
       . '(kmdc fetch) does not fail on the dead pooled connection')
        or diag("kmdc fetch exit $frc: $fout");
    my ($grc, $gout) = $fetch_c->();
    is($grc, 0, 'idle restart: the request after it succeeds') or diag($gout);
    httpd_stop($c);
    # whatever the pools held, the service settles (also the Apache::Test
    # server, which the rest of the suite uses)
    my @settled;
    for my $base ($url{a}, $url{b}, defined $suite_url ? ($suite_url) : ()) {
        my ($ok, $n503, $other) = flush_health($base, 12, 80);
        push @settled, "$base: " . ($ok ? 'ok' : 'NOT settled') . ", $n503 x 503, $other other";
    }
    ok(!grep({ /NOT settled/ } @settled), 'idle restart: every front-end answers 200 again')
        or diag(join "\n", @settled);
    # The front-ends and the Apache::Test server (it shares the cluster) may
    # hold such connections in children the requests above did not reach:
    # restart them gracefully so the rest of this test and of the suite
    # start with fresh pools (needed only while the TODO above stands).
    ok(httpd_graceful($httpd{a}, undef) && httpd_graceful($httpd{b}, undef),
       'idle restart: both front-ends restarted gracefully (fresh database pools)');
    my $pidfile = File::Spec->rel2abs('t/logs/httpd.pid');
    my ($spid) = slurp($pidfile) =~ /^(\d+)/;
    SKIP: {
        skip('no Apache::Test server (KMDC_SUITE_URL, t/logs/httpd.pid)', 1)
            unless defined $suite_url && $spid;
        ok(httpd_graceful({ pid => $spid, dir => File::Spec->rel2abs('t/logs'),
                            conf => { probe => "$suite_url/health" } }, undef)
           && (http_get("$suite_url/health"))[0] == 200,
           'idle restart: the Apache::Test server restarted gracefully (fresh pools for the '
           . 'rest of the suite)');
    }
    my $r = send_one('s3', 'p2-s3-after-idle-restart.txt', ['hub'], 'b');
    is($r->{rc}, 0, 'idle restart: kmdc send afterwards exits 0 at the first try') or diag($r->{out});
}

# ---- phase 3: rekey under load, then the old key removed ---------------------------------

my $K3 = 6;
SKIP: {
    my ($hrc, $help) = run($kmdcadm, 'rekey', '--help');
    skip('kmdcadm rekey is not there yet: the rekey phase is skipped', 2 * 5 + 18)
        unless $hrc == 0 && $help =~ /rekey \[--check\]/;

    keygen($key2);
    ok(-s $key2 && ((stat $key2)[2] & 07777) == 0600, 'rekey: kmdcadm keygen wrote key 2 (mode 0600)');
    my $g = httpd_graceful($httpd{a}, body_for([1, $key1], [2, $key2]))
        && httpd_graceful($httpd{b}, body_for([1, $key1], [2, $key2]));
    ok($g, 'rekey: both front-ends restarted gracefully with KmdcMasterKey 1 and 2');

    my $base = sql($db, 'SELECT count(*) FROM messages');
    my $stop = "$work/p3.stop";
    my $f = start_fetchers('p3', $stop, 'hub', 's2', 's7');
    my $s = start_senders('p3', $K3, pause => 0.05);
    my $deadline = time + 30;
    while (time < $deadline && sql($db, 'SELECT count(*) FROM messages') < $base + $NSENDERS) {
        sleep 0.05;
    }
    my ($rrc, $rout) = run($kmdcadm, '--db', $conninfo, '--master-key', "1:$key1",
                           '--master-key', "2:$key2", 'rekey');
    my $during = sql($db, 'SELECT count(*) FROM messages') < $base + $NSENDERS * $K3;
    is($rrc, 0, 'rekey: kmdcadm rekey with keys 1 and 2 exits 0') or diag($rout);
    like($rout, qr/rewrapped \d+ values? of \d+ cards? under master key id 2/,
         'rekey: it reports what it rewrapped') or diag($rout);
    ok($during, 'rekey: it ran while the senders were sending');
    my $att = finish_senders($s, 120);
    my ($nf, @fbad) = finish_fetchers($f, $stop);
    ok($nf >= 6 && !@fbad, "rekey: hub, s2 and s7 fetched $nf times during the rekey, every "
       . 'fetch exit 0') or diag(join "\n", @fbad);
    my ($rc, $max) = summary($att);
    is($rc->{0} // 0, scalar(@$att), 'rekey: every send under the rekey exits 0: ' . rc_text($rc))
        or diag(failures_text($att, sub { $_[0]{rc} != 0 }));
    ok($max < $SLOW, sprintf('rekey: no send took %d s or more (slowest %.2f s)', $SLOW, $max));

    my ($crc, $cout) = run($kmdcadm, '--db', $conninfo, '--master-key', "2:$key2",
                           'rekey', '--check');
    is($crc, 0, 'rekey: rekey --check given only key 2 exits 0') or diag($cout);
    like($cout, qr/only master key id 2 is needed/, 'rekey: --check says key 1 may go')
        or diag($cout);
    my ($orc, $oout) = run($kmdcadm, '--db', $conninfo, '--master-key', "1:$key1",
                           'rekey', '--check');
    is($orc, 1, 'rekey: rekey --check given only key 1 fails (values need key 2)') or diag($oout);
    is(sql($db, q{SELECT count(*) FROM cards WHERE substring(up_chain from 1 for 4)
                  <> '\x00000002'::bytea OR substring(down_chain from 1 for 4)
                  <> '\x00000002'::bytea OR substring(auth_key from 1 for 4)
                  <> '\x00000002'::bytea}), 0,
       'rekey: every wrapped value in the database names key id 2');

    $g = httpd_graceful($httpd{a}, body_for([2, $key2]))
        && httpd_graceful($httpd{b}, body_for([2, $key2]));
    ok($g, 'rekey: both front-ends restarted with only KmdcMasterKey 2');
    ok(unlink($key1) && !-e $key1, 'rekey: master key file 1 removed');
    my @h = map { (http_get("$url{$_}/health"))[0] } 'a', 'b';
    ok($h[0] == 200 && $h[1] == 200, 'rekey: /health 200 on both front-ends without key 1');
    check_all('rekey');

    # and sending goes on with only key 2
    my $s4 = start_senders('p4', 2);
    my $att4 = finish_senders($s4, 60);
    my ($rc4, $max4) = summary($att4);
    is($rc4->{0} // 0, $NSENDERS * 2, 'after rekey: every send through both front-ends exits 0')
        or diag(failures_text($att4, sub { $_[0]{rc} != 0 }));
    ok($max4 < $SLOW, sprintf('after rekey: slowest send %.2f s', $max4));
    my ($rrc2, $rout2) = run($kmdcadm, '--db', $conninfo, '--master-key', "2:$key2",
                             'rekey', '--check');
    is($rrc2, 0, 'after rekey: rekey --check with only key 2 still exits 0 (new values '
       . 'are wrapped under key 2)') or diag($rout2);
    check_all('after rekey');
}

# ---- the logs ------------------------------------------------------------------------

{
    my @names = map { quotemeta } sort keys %sealed;
    my $re = join '|', @names, '\\bhub\\b';
    my @leak = grep { /$re/ } map { split /\n/, slurp("$root/$_/error_log") } 'a', 'b';
    ok(!@leak, 'logs: no document name or card address in the front-ends\' error logs')
        or diag(join "\n", @leak[0 .. ($#leak < 10 ? $#leak : 10)]);
}

httpd_stop($_) for values %httpd;

done_testing();
