# t/lib/KmdcCluster.pm - helpers of the tests that run their own httpd
# instances next to the Apache::Test server (t/080_cluster.t, t/090_https.t):
# a generated httpd.conf with the built module, start/stop/graceful restart,
# a private database in the suite's PostgreSQL cluster, stopping and starting
# that cluster, master key files, and cards issued with the built kmdcadm and
# driven with the real kmdc client.
#
# Needs the environment of t/run-suite (KMDC_BUILD, KMDC_MODULE, KMDC_HTTPD,
# KMDC_APXS, KMDC_SRCDIR, KMDC_SQLDIR, PGHOST/PGPORT/PGDATABASE/PGUSER).
# Nothing here reads the test's own files: every path is given by the caller.
# run, run3, timed, slurp, spew and free_port are KmdcUtil's, re-exported.
package KmdcCluster;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use File::Path qw(make_path);
use File::Spec ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);

use KmdcUtil qw(run run3 timed slurp spew free_port kmdcadm_issue);

our @EXPORT_OK = qw(run run3 timed sql slurp spew free_port modules_dir
                    httpd_conf httpd_start httpd_stop httpd_graceful httpd_stop_all
                    log_count conninfo create_db keygen issue card_info http_get
                    pg_stop pg_start pg_log);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $is_root = $> == 0;
my %running;    # httpd pid => handle, stopped in END
my $pg_stopped = 0;     # the pid that ran pg_stop: started again in END if the test dies

# One SQL statement through psql on database $db; the rows as "a|b" lines.
sub sql {
    my ($db, $q) = @_;
    return KmdcUtil::sql($q, '-d', $db);
}

# httpd's module folder.
sub modules_dir {
    my $apxs = $ENV{KMDC_APXS} || 'apxs';
    my $d = qx{'$apxs' -q LIBEXECDIR 2>/dev/null} // '';
    chomp $d;
    return $d ne '' ? $d : '/usr/lib/apache2/modules';
}

# The text of an httpd.conf: event MPM, mod_reqtimeout with the values
# conf/httpd-example.conf recommends, the built module, the extra LoadModule
# lines of $o{modules} (name => file), and $o{body}.  Listens on $o{listen}
# (a list of "addr:port [proto]").
sub httpd_conf {
    my (%o) = @_;
    my $dir = $o{dir};
    my $mods = modules_dir();
    my $user = $is_root ? "User nobody\nGroup nogroup\n" : '';
    my $listen = join '', map { "Listen $_\n" } @{ $o{listen} };
    my $load = join '', map { "LoadModule $_ \"$mods/$o{modules}{$_}\"\n" }
        sort keys %{ $o{modules} // {} };
    my $threads = $o{threads} // 8;
    my $servers = $o{servers} // 2;
    my $max = $threads * $servers;
    return <<"EOF";
ServerRoot "$dir"
${listen}ServerName localhost
LoadModule mpm_event_module "$mods/mod_mpm_event.so"
LoadModule authz_core_module "$mods/mod_authz_core.so"
LoadModule reqtimeout_module "$mods/mod_reqtimeout.so"
${load}LoadModule kmdc_module "$ENV{KMDC_MODULE}"
RequestReadTimeout header=20-40,MinRate=500 body=20,MinRate=500
${user}PidFile "$dir/httpd.pid"
ErrorLog "$dir/error_log"
LogLevel info
DefaultRuntimeDir "$dir"
StartServers $servers
ServerLimit $servers
ThreadsPerChild $threads
ThreadLimit $threads
MinSpareThreads 1
MaxSpareThreads $max
MaxRequestWorkers $max
GracefulShutdownTimeout 10
$o{body}
EOF
}

# Start httpd in the foreground on $dir/httpd.conf (written from %o by
# httpd_conf) and wait until $o{probe} (a URL) answers anything.  Returns a
# handle {pid, dir, started, exit, log, conf => \%o}.
sub httpd_start {
    my (%o) = @_;
    my $dir = $o{dir};
    make_path($dir);
    spew("$dir/httpd.conf", httpd_conf(%o));
    my $httpd = $ENV{KMDC_HTTPD} || '/usr/sbin/apache2';
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>>', "$dir/stderr" or POSIX::_exit(126);
        exec($httpd, '-d', $dir, '-f', "$dir/httpd.conf", '-DFOREGROUND')
            or POSIX::_exit(127);
    }
    my $h = { pid => $pid, dir => $dir, started => 0, conf => \%o };
    $running{$pid} = $h;
    my $deadline = time + 20;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            $h->{exit} = $?;
            last;
        }
        my ($code) = http_get($o{probe}, @{ $o{curl} // [] });
        if ($code > 0) {
            $h->{started} = 1;
            last;
        }
        sleep 0.1;
    }
    $h->{log} = slurp("$dir/stderr") . slurp("$dir/error_log");
    return $h;
}

sub httpd_stop {
    my ($h) = @_;
    my $pid = $h->{pid};
    return unless $pid && $running{$pid};
    kill 'TERM', $pid;
    my $deadline = time + 20;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            return;
        }
        sleep 0.1;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    delete $running{$pid};
}

sub httpd_stop_all { httpd_stop($_) for values %running }

# Count of the lines of $h's error_log that match $re.
sub log_count {
    my ($h, $re) = @_;
    my @l = grep { /$re/ } split /\n/, slurp("$h->{dir}/error_log");
    return scalar @l;
}

# Rewrite $h's configuration with $body (unless undef) and restart it
# gracefully (SIGUSR1, what `apachectl -k graceful` sends); wait until the new
# generation serves.  $h may also be {pid, dir (of its error_log), conf =>
# {probe}} for an httpd this module did not start.  True on success.
sub httpd_graceful {
    my ($h, $body) = @_;
    my %o = %{ $h->{conf} };
    if (defined $body) {
        $o{body} = $body;
        $h->{conf} = \%o;
        spew("$h->{dir}/httpd.conf", httpd_conf(%o));
    }
    my $re = qr/resuming normal operations/;
    my $before = log_count($h, $re);
    kill 'USR1', $h->{pid} or return 0;
    my $deadline = time + 20;
    while (time < $deadline) {
        return 0 if waitpid($h->{pid}, WNOHANG) == $h->{pid};
        if (log_count($h, $re) > $before) {
            my ($code) = http_get($o{probe}, @{ $o{curl} // [] });
            return 1 if $code > 0;
        }
        sleep 0.1;
    }
    return 0;
}

END {
    local $?;       # the test's exit status
    # the rest of the suite needs the database: never leave it stopped
    pg_start() if $pg_stopped && $pg_stopped == $$;
    for my $h (values %running) {
        kill 'TERM', $h->{pid};
    }
    for my $h (values %running) {
        waitpid($h->{pid}, 0);
    }
}

# GET a URL with curl: (HTTP status or 0, body, curl's exit status, headers).
sub http_get {
    my ($url, @opts) = @_;
    my $tmp = File::Spec->catfile(File::Spec->tmpdir, "kmdc-get-$$-" . int(rand(1e9)));
    my ($rc, $out) = run('curl', '-sS', '--max-time', '10', '-o', "$tmp.body",
                         '-D', "$tmp.hdr", '-w', '%{http_code}', @opts, $url);
    my $body = slurp("$tmp.body");
    my $hdr = slurp("$tmp.hdr");
    unlink "$tmp.body", "$tmp.hdr";
    my ($code) = $out =~ /(\d{3})\s*$/;
    return ($rc == 0 ? ($code // 0) + 0 : 0, $body, $rc, $hdr);
}

# A fresh database $db in the suite's cluster with the migrations applied.
sub create_db {
    my ($db) = @_;
    local $ENV{PGOPTIONS} = '-c client_min_messages=warning';
    my ($rc, $out) = run('psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', 'postgres',
                         '-c', "DROP DATABASE IF EXISTS $db", '-c', "CREATE DATABASE $db");
    die "cannot create database $db: $out" if $rc;
    ($rc, $out) = run("$ENV{KMDC_BUILD}/admin/kmdcadm", '--db', conninfo($db), 'migrate');
    die "kmdcadm migrate on $db failed: $out" if $rc;
    return conninfo($db);
}

# libpq conninfo of database $db over 127.0.0.1.
sub conninfo {
    my ($db) = @_;
    return "host=127.0.0.1 port=$ENV{PGPORT} dbname=$db user=$ENV{PGUSER}";
}

# A new master key file written by kmdcadm keygen; dies on failure.
sub keygen {
    my ($file) = @_;
    unlink $file;
    my ($rc, $out) = run("$ENV{KMDC_BUILD}/admin/kmdcadm", 'keygen', '--out', $file);
    die "kmdcadm keygen failed: $out" if $rc;
    return $file;
}

# Issue a card with kmdcadm: {address, serial, code, file}.  %o: db
# (conninfo), keys (list of "ID:FILE"), url, file.
sub issue {
    my (%o) = @_;
    my $i = kmdcadm_issue(%o);
    return { address => $i->{address}, serial => $i->{serial}, code => $i->{code},
             file => $i->{file} };
}

# `kmdc card` as a hash (serial, up_next, down_next, outbox...), or undef.
sub card_info {
    my ($kmdc, $file, @global) = @_;
    my ($rc, $out) = run($kmdc, @global, '--card', $file, 'card');
    return undef if $rc;
    my %h = $out =~ /^(\w+):\s*(.*?)\s*$/mg;
    return \%h;
}

# --- the suite's PostgreSQL cluster -------------------------------------------
# t/run-suite started it with t/pgcluster under $PGHOST (socket and data dir).

sub pg_dir { return $ENV{PGHOST} }


# Stop the cluster (pg_ctl -m fast, as its owner).  True on success.
sub pg_stop {
    $pg_stopped = $$;
    my ($rc, $out) = run("$ENV{KMDC_SRCDIR}/t/pgcluster", 'stop', pg_dir());
    warn $out if $rc;
    return $rc == 0;
}

# Start it again on the same port.  True on success.
sub pg_start {
    local $ENV{PGCLUSTER_PORT} = $ENV{PGPORT};
    my ($rc, $out) = run("$ENV{KMDC_SRCDIR}/t/pgcluster", 'start', pg_dir());
    return 0 if $rc;
    $pg_stopped = 0;
    return $out =~ /\bPGPORT=\Q$ENV{PGPORT}\E\b/ ? 1 : 0;
}

# The server log of the cluster.
sub pg_log { return slurp(pg_dir() . '/log') }

1;
