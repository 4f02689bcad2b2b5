# t/ha/pgbouncer.t - mod_kmdc behind pgbouncer (Debian's 1.18), in session and
# in transaction pooling.
#
# Session pooling: KmdcDatabase points at pgbouncer and nothing else changes;
# the module notices the pooler (its backend key is not the server's), logs it
# once and keeps to what every pooling mode allows; LISTEN holds, so a
# `kmdc watch` is woken at once by a send.  Transaction pooling:
# `KmdcDatabasePooling transaction` without a KmdcListenDatabase that reaches
# PostgreSQL itself is refused at start-up (httpd -t) with a clear message;
# with it, the relay works through the transaction pooler and long-polls are
# woken through the direct LISTEN connection.  kmdcadm issue goes through
# both modes.
#
# Each pgbouncer runs in the foreground on a free port (as the postgres user
# when root), against a database of the suite's PostgreSQL, and is stopped by
# its process id.  Logs: t/logs/ha_pgbouncer/.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/../lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp qw(tempdir);
use POSIX ();
use Time::HiRes qw(sleep time);
use KmdcCluster qw(run slurp spew free_port httpd_conf httpd_start httpd_stop http_get
                   issue keygen create_db card_info);

for my $v (qw(KMDC_BUILD KMDC_MODULE KMDC_SRCDIR PGHOST PGPORT PGUSER)) {
    BAIL_OUT("$v is not set: run it with t/ha.sh BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}
my $pgbouncer = $ENV{PGBOUNCER} || '/usr/sbin/pgbouncer';
plan skip_all => "pgbouncer not installed ($pgbouncer): apt-get install pgbouncer"
    unless -x $pgbouncer;
plan tests => 16;

my $build = $ENV{KMDC_BUILD};
my $kmdc = "$build/kmdc/kmdc";
my $kmdcadm = "$build/admin/kmdcadm";
my $root = File::Spec->rel2abs('t/logs/ha_pgbouncer');
my $work = tempdir('kmdc-pgb-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $work;
remove_tree($root);
make_path($root);
chmod 0755, $root;
my $is_root = $> == 0;

my $direct = create_db('kmdc_pgbouncer');
my $key = keygen("$work/master-1.key");
my %bouncer;     # mode => {pid, port, dir}

# A pgbouncer in $mode pooling in front of the database; returns its handle.
sub bouncer_start {
    my ($mode) = @_;
    my $dir = "$work/pgb-$mode";
    mkdir $dir or die "$dir: $!";
    my $port = free_port();
    spew("$dir/users.txt", qq{"$ENV{PGUSER}" ""\n});
    spew("$dir/pgbouncer.ini", <<"EOF");
[databases]
kmdc = host=127.0.0.1 port=$ENV{PGPORT} dbname=kmdc_pgbouncer user=$ENV{PGUSER}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = $mode
max_client_conn = 200
default_pool_size = 10
server_check_delay = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
    if ($is_root) {
        my (undef, undef, $uid, $gid) = getpwnam('postgres') or die 'no user postgres';
        chown $uid, $gid, $dir, glob("$dir/*") or die "chown: $!";
    }
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        exec($pgbouncer, ($is_root ? ('-u', 'postgres') : ()), "$dir/pgbouncer.ini")
            or POSIX::_exit(127);
    }
    my $h = { pid => $pid, port => $port, dir => $dir, mode => $mode };
    $bouncer{$mode} = $h;
    my $deadline = time + 20;
    while (time < $deadline) {
        my ($rc) = run('psql', '-XAtq', '-d', bouncer_conninfo($h), '-c', 'SELECT 1');
        return $h if $rc == 0;
        last if waitpid($pid, POSIX::WNOHANG()) == $pid;
        sleep 0.1;
    }
    die "pgbouncer ($mode) did not start: " . slurp("$dir/stdout") . slurp("$dir/pgbouncer.log");
}

sub bouncer_conninfo {
    my ($h) = @_;
    return "host=127.0.0.1 port=$h->{port} dbname=kmdc user=$ENV{PGUSER}";
}

END {
    for my $h (values %bouncer) {
        kill 'TERM', $h->{pid};
        waitpid($h->{pid}, 0);
        system('cp', '-r', $h->{dir}, $root);    # the logs, for a failure
    }
}

sub body {
    my ($db, $extra) = @_;
    return <<"EOF";
KmdcDatabase "$db"
KmdcMasterKey 1 "$key"
KmdcDbPool 1 4
$extra
<Location /kmdc>
    SetHandler kmdc
</Location>
EOF
}

my $httpd = $ENV{KMDC_HTTPD} || '/usr/sbin/apache2';

# A front-end; {h, url}.
sub front {
    my ($name, $body) = @_;
    my $port = free_port();
    my $url = "http://127.0.0.1:$port/kmdc";
    my $h = httpd_start(dir => "$root/$name", listen => ["127.0.0.1:$port"],
                        probe => "$url/health", body => $body);
    return { h => $h, url => $url, name => $name };
}

# Two cards of $db through $f: activated; then a relay, and a watch woken.
my $n = 0;
sub relay {
    my ($f, $db, $tag) = @_;
    my %c;
    for my $a ("$tag-x", "$tag-y") {
        $c{$a} = issue(db => $db, keys => ["1:$key"], url => $f->{url}, address => $a,
                       file => "$work/$a.card");
        my ($rc, $out) = run($kmdc, '--card', $c{$a}{file}, 'activate', $c{$a}{code});
        return "activate $a: $out" if $rc;
    }
    my $doc = spew("$work/$tag.txt", "through pgbouncer ($tag)\n" x 50);
    my ($rc, $out) = run($kmdc, '--card', $c{"$tag-x"}{file}, 'send', '--to', "$tag-y",
                         '--name', "$tag-1.txt", $doc);
    return "send: $out" if $rc;
    my $in = "$work/in-$tag";
    mkdir $in;
    ($rc, $out) = run($kmdc, '--card', $c{"$tag-y"}{file}, 'fetch', '-d', $in);
    return "fetch: $out" if $rc;
    return "fetch wrote nothing" unless slurp("$in/$tag-1.txt") eq slurp($doc);
    # a watch, woken by the next send well before its 60 s long-poll ends
    my $wd = "$work/watch-$tag";
    mkdir $wd;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>', "$work/watch-$tag.out" or POSIX::_exit(1);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(1);
        exec($kmdc, '--card', $c{"$tag-y"}{file}, 'watch', '-d', $wd) or POSIX::_exit(127);
    }
    sleep 1.5;      # the watch fetched and waits in its long-poll
    my $t0 = time;
    ($rc, $out) = run($kmdc, '--card', $c{"$tag-x"}{file}, 'send', '--to', "$tag-y",
                      '--name', "$tag-2.txt", $doc);
    my $deadline = time + 20;
    sleep 0.1 while time < $deadline && !-e "$wd/$tag-2.txt";
    my $secs = time - $t0;
    kill 'TERM', $pid;
    waitpid($pid, 0);
    return "second send: $out" if $rc;
    return "the watch did not receive the second document" unless -e "$wd/$tag-2.txt";
    return sprintf('the watch took %.1f s (woken at its deadline, not by NOTIFY?)', $secs)
        if $secs > 8;
    return '';
}

# ---- session pooling ----------------------------------------------------------------

{
    my $b = bouncer_start('session');
    my $via = bouncer_conninfo($b);
    my ($rc, $out) = run($kmdcadm, '--db', $via, 'list');
    is($rc, 0, 'session: kmdcadm works through pgbouncer') or diag($out);
    my $f = front('session', body($via, ''));
    ok($f->{h}{started}, 'session: a front-end starts with KmdcDatabase through pgbouncer')
        or diag($f->{h}{log});
    my ($code) = http_get("$f->{url}/health");
    is($code, 200, 'session: /health 200 through pgbouncer');
    my $err = relay($f, $via, 'sess');
    is($err, '', 'session: issue, activate, send, fetch, and a kmdc watch woken at once '
       . '(LISTEN holds in session pooling)');
    my $log = slurp("$root/session/error_log");
    like($log, qr/KmdcDatabase reaches PostgreSQL through a connection pooler; prepared /,
         'session: the module noticed the pooler (backend key) and keeps to what every mode '
         . 'allows');
    like($log, qr/the long-poll listener reaches PostgreSQL through a connection pooler: its LISTEN holds only with session pooling/,
         'session: the listener warns that LISTEN needs session pooling');
    httpd_stop($f->{h});
}

# ---- transaction pooling --------------------------------------------------------------

{
    my $b = bouncer_start('transaction');
    my $via = bouncer_conninfo($b);

    # refused without a direct LISTEN connection (httpd -t)
    my $dir = "$root/txn-refused";
    make_path($dir);
    spew("$dir/httpd.conf", httpd_conf(dir => $dir, listen => ['127.0.0.1:' . free_port()],
                                       body => body($via, 'KmdcDatabasePooling transaction')));
    my ($rc, $out) = run($httpd, '-t', '-d', $dir, '-f', "$dir/httpd.conf");
    ok($rc != 0, 'transaction: KmdcDatabasePooling transaction without KmdcListenDatabase '
       . 'is refused at start-up (httpd -t fails)');
    like($out, qr/KmdcDatabasePooling transaction is set for .*LISTEN \(long-poll wake-ups\) cannot work through a transaction pooler: set KmdcListenDatabase/s,
         'transaction: with a clear message naming KmdcListenDatabase') or diag($out);

    # a multi-host string without target_session_attrs is refused as well
    spew("$dir/httpd.conf", httpd_conf(dir => $dir, listen => ['127.0.0.1:' . free_port()],
                                       body => body('host=127.0.0.1,127.0.0.1 port=1,2 '
                                                    . 'dbname=kmdc', '')));
    ($rc, $out) = run($httpd, '-t', '-d', $dir, '-f', "$dir/httpd.conf");
    ok($rc != 0 && $out =~ /KmdcDatabase names several hosts but not target_session_attrs=/,
       'start-up: a multi-host KmdcDatabase without target_session_attrs=read-write is '
       . 'refused') or diag($out);
    spew("$dir/httpd.conf", httpd_conf(dir => $dir, listen => ['127.0.0.1:' . free_port()],
                                       body => body('host=127.0.0.1 port=5432 dbname', '')));
    ($rc, $out) = run($httpd, '-t', '-d', $dir, '-f', "$dir/httpd.conf");
    ok($rc != 0 && $out =~ /KmdcDatabase: not a libpq connection string or URI: /,
       'start-up: a KmdcDatabase libpq cannot parse is refused with libpq\'s reason')
        or diag($out);
    spew("$dir/httpd.conf", httpd_conf(
             dir => $dir, listen => ['127.0.0.1:' . free_port()],
             body => body('postgresql://postgres@127.0.0.1:1,127.0.0.1:2/kmdc?'
                          . 'target_session_attrs=read-write&connect_timeout=2', '')));
    ($rc, $out) = run($httpd, '-t', '-d', $dir, '-f', "$dir/httpd.conf");
    ok($rc == 0, 'start-up: a multi-host URI with target_session_attrs=read-write is accepted')
        or diag($out);

    # with KmdcListenDatabase straight to PostgreSQL: it works
    ($rc, $out) = run($kmdcadm, '--db', $via, 'list');
    is($rc, 0, 'transaction: kmdcadm list works through pgbouncer') or diag($out);
    my $f = front('transaction', body($via, "KmdcDatabasePooling transaction\n"
                                      . qq{KmdcListenDatabase "$direct"}));
    ok($f->{h}{started}, 'transaction: a front-end starts with KmdcDatabasePooling '
       . 'transaction and a direct KmdcListenDatabase') or diag($f->{h}{log});
    my ($code) = http_get("$f->{url}/health");
    is($code, 200, 'transaction: /health 200 through the transaction pooler');
    my $err = relay($f, $via, 'txn');
    is($err, '', 'transaction: issue, activate, send, fetch through the transaction pooler; '
       . 'a kmdc watch woken at once through the direct LISTEN connection');
    my $log = slurp("$root/transaction/error_log");
    ok($log !~ /long-poll listener reaches PostgreSQL through a connection pooler/
       && $log =~ /KmdcDatabase reaches PostgreSQL through a connection pooler; prepared /,
       'transaction: the pool noticed the pooler, the listener did not (it is direct)');
    httpd_stop($f->{h});
}
