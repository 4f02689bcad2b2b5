# t/ha/silent_host.t - a multi-host KmdcDatabase whose first host never
# answers (a machine lost without a word: the TCP connection is accepted by the
# kernel, the PostgreSQL start-up packet is never answered).
#
# The pool's connections give that host up after connect_timeout and go on to
# the second host, so /health answers 200 within seconds.  libpq applies no
# connect_timeout to the non-blocking connection of the long-poll listener:
# after an attempt that timed out (10 s) the listener starts its next attempt
# at the next host, so it listens again, and a `kmdc watch` is woken by a send
# at once rather than at the end of its long-poll.
# Logs: t/logs/ha_silent_host/.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/../lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp qw(tempdir);
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(sleep time);
use KmdcCluster qw(run slurp spew httpd_start httpd_stop http_get issue keygen create_db
                   log_count);

for my $v (qw(KMDC_BUILD KMDC_MODULE KMDC_SRCDIR PGHOST PGPORT PGUSER)) {
    BAIL_OUT("$v is not set: run it with t/ha.sh BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}
plan tests => 5;

my $kmdc = "$ENV{KMDC_BUILD}/kmdc/kmdc";
my $root = File::Spec->rel2abs('t/logs/ha_silent_host');
my $work = tempdir('kmdc-silent-XXXXXX', TMPDIR => 1, CLEANUP => 1);
remove_tree($root);
make_path($root);
chmod 0755, $root;

my $direct = create_db('kmdc_silent');
my $key = keygen("$work/master-1.key");

# the silent host: listens (the kernel completes handshakes), never accepts
my $hole = IO::Socket::INET->new(Listen => 128, LocalAddr => '127.0.0.1', LocalPort => 0,
                                 Proto => 'tcp', ReuseAddr => 1) or die "listen: $!";
my $hole_port = $hole->sockport;
my $multi = "host=127.0.0.1,127.0.0.1 port=$hole_port,$ENV{PGPORT} dbname=kmdc_silent "
    . "user=$ENV{PGUSER} target_session_attrs=read-write connect_timeout=2";

my $t0 = time;
my $port = KmdcCluster::free_port();
my $url = "http://127.0.0.1:$port/kmdc";
my $h = httpd_start(dir => $root, listen => ["127.0.0.1:$port"], probe => "$url/health",
                    servers => 1, body => <<"EOF");
KmdcDatabase "$multi"
KmdcMasterKey 1 "$key"
KmdcDbPool 0 4
<Location /kmdc>
    SetHandler kmdc
</Location>
EOF
ok($h->{started}, 'a front-end starts with a first host that never answers') or diag($h->{log});

my ($code, $secs);
{
    my $deadline = time + 30;
    while (time < $deadline) {
        ($code) = http_get("$url/health");
        last if $code == 200;
        sleep 0.1;
    }
    $secs = time - $t0;
}
is($code, 200, sprintf('/health 200 through the second host after %.1f s (connect_timeout=2 '
                       . 'gives the first one up)', $secs));

my $deadline = time + 40;
sleep 0.2 while time < $deadline
    && !log_count($h, qr/kmdc: the long-poll listener is listening again/);
my $log = slurp("$root/error_log");
ok($log =~ /the long-poll listener \(KmdcDatabase\) timed out connecting/
   && $log =~ /kmdc: the long-poll listener is listening again/,
   sprintf('the listener timed out on the silent host, then listened through the second '
           . '(%.1f s after start)', time - $t0)) or diag($log);

# a watch woken at once: LISTEN really holds on the second host
my %c;
for my $a ('sh-x', 'sh-y') {
    $c{$a} = issue(db => $direct, keys => ["1:$key"], url => $url, address => $a,
                   file => "$work/$a.card");
    my ($rc, $out) = run($kmdc, '--card', $c{$a}{file}, 'activate', $c{$a}{code});
    diag("activate $a: $out") if $rc;
}
my $wd = "$work/watch";
mkdir $wd;
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    open STDOUT, '>', "$work/watch.out" or POSIX::_exit(1);
    open STDERR, '>&', \*STDOUT or POSIX::_exit(1);
    exec($kmdc, '--card', $c{'sh-y'}{file}, 'watch', '-d', $wd) or POSIX::_exit(127);
}
sleep 1.5;
my $doc = spew("$work/doc.txt", "silent host\n" x 20);
my ($rc, $out) = run($kmdc, '--card', $c{'sh-x'}{file}, 'send', '--to', 'sh-y', '--name',
                     'after.txt', $doc);
is($rc, 0, 'kmdc send through the front-end') or diag($out);
my $t1 = time;
$deadline = time + 20;
sleep 0.1 while time < $deadline && !-e "$wd/after.txt";
my $w = time - $t1;
kill 'TERM', $pid;
waitpid($pid, 0);
ok(-e "$wd/after.txt" && $w < 8, sprintf('kmdc watch woken by the send after %.1f s (a '
                                           . 'NOTIFY, not the long-poll\'s end)', $w))
    or diag(slurp("$work/watch.out"));
httpd_stop($h);
close $hole;
