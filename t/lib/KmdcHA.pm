# t/lib/KmdcHA.pm - a PostgreSQL primary with streaming standbys under /tmp,
# for the failover tests (t/ha/): the primary is made like t/pgcluster makes
# its cluster (initdb as the postgres user when run as root, trust
# authentication, a Unix socket in the node's folder and 127.0.0.1 on a free
# port, fsync on); a standby is cloned with `pg_basebackup -R` (streaming
# replication, primary_conninfo written by pg_basebackup) and started on its
# own port.  Synchronous replication is synchronous_standby_names = '*' with
# synchronous_commit = on: a COMMIT returns once a standby has flushed it.
#
#   my $ha = KmdcHA->new(dir => $tmpdir);
#   my $p = $ha->primary(sync => 1);        # {name, dir, port, data}
#   my $s = $ha->standby($p);               # cloned from $p, streaming
#   $ha->wait_streaming($p, 1);             # pg_stat_replication: streaming, sync
#   $ha->kill9($p);                         # SIGKILL to the postmaster only
#   $ha->promote($s);                       # pg_ctl promote -w
#   $ha->conninfo(db => 'kmdc', nodes => [$p, $s]);   # multi-host string
#   $ha->stop_all;                          # also from DESTROY and END
#
# Every process this module started is stopped by id (pg_ctl stop, or SIGKILL
# to the processes a killed postmaster left), and the folder is removed.
package KmdcHA;

use strict;
use warnings FATAL => 'all';

use File::Path qw(make_path remove_tree);
use POSIX ();
use Time::HiRes qw(sleep time);

use KmdcUtil ();

my $is_root = $> == 0;
my @all;        # every KmdcHA object, stopped in END

sub bindir {
    for my $d ($ENV{PG_BINDIR}, scalar(qx{pg_config --bindir 2>/dev/null}),
               '/usr/lib/postgresql/15/bin') {
        next unless defined $d;
        chomp(my $x = $d);
        return $x if $x ne '' && -x "$x/initdb" && -x "$x/pg_basebackup";
    }
    die "PostgreSQL server binaries not found (postgresql-15)";
}

# Run a command (as postgres when root): (exit status, output).
sub run_pg {
    my (@argv) = @_;
    unshift @argv, 'runuser', '-u', 'postgres', '--' if $is_root;
    return KmdcUtil::run(@argv);
}

sub free_port { return KmdcUtil::free_port() }

sub new {
    my ($class, %o) = @_;
    my $self = bless { dir => $o{dir}, bin => bindir(), nodes => [], n => 0 }, $class;
    make_path($self->{dir});
    chmod 0755, $self->{dir};
    push @all, $self;
    return $self;
}

sub _node_dir {
    my ($self, $name) = @_;
    my $d = "$self->{dir}/$name";
    make_path($d);
    if ($is_root) {
        my (undef, undef, $uid, $gid) = getpwnam('postgres') or die "no user postgres";
        chown $uid, $gid, $d or die "chown $d: $!";
    }
    chmod 0700, $d;
    return $d;
}

sub _start {
    my ($self, $node, $port) = @_;
    for my $try (1 .. 5) {
        $node->{port} = $try == 1 && $port ? $port : free_port();
        my ($rc, $out) = run_pg("$self->{bin}/pg_ctl", '-D', $node->{data}, '-l',
                                "$node->{dir}/log", '-w', '-t', '60', '-o',
                                "-p $node->{port} -k $node->{dir} "
                                . '-c listen_addresses=127.0.0.1 -c fsync=on', 'start');
        if ($rc == 0) {
            $node->{running} = 1;
            $node->{pid} = $self->postmaster_pid($node);
            return $node;
        }
        warn "pg_ctl start of $node->{name} failed (try $try): $out";
    }
    die "cannot start $node->{name}: " . KmdcUtil::slurp("$node->{dir}/log");
}

# The primary: initdb, replication settings, started; the database kmdc made.
sub primary {
    my ($self, %o) = @_;
    my $name = $o{name} // 'n' . $self->{n}++;
    my $dir = $self->_node_dir($name);
    my $node = { name => $name, dir => $dir, data => "$dir/data" };
    my ($rc, $out) = run_pg("$self->{bin}/initdb", '-D', $node->{data}, '-U', 'postgres',
                            '-A', 'trust', '-E', 'UTF8', '--locale=C.UTF-8', '--no-sync');
    die "initdb: $out" if $rc;
    # synchronous only once a standby is there (set_sync): a COMMIT would wait
    $self->_append_conf($node, 0);
    $node->{sync} = $o{sync};
    $self->_start($node);
    ($rc, $out) = run_pg("$self->{bin}/createdb", '-h', $dir, '-p', $node->{port},
                         '-U', 'postgres', $o{db} // 'kmdc');
    die "createdb: $out" if $rc;
    push @{ $self->{nodes} }, $node;
    return $node;
}

sub _append_conf {
    my ($self, $node, $sync) = @_;
    my $conf = "$node->{data}/postgresql.auto.conf";
    open my $fh, '>>', $conf or die "$conf: $!";
    print {$fh} "wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n",
        "wal_keep_size = '64MB'\nsynchronous_commit = on\n",
        # segments in the data folder: nothing left in /dev/shm after a SIGKILL
        "dynamic_shared_memory_type = mmap\n",
        'synchronous_standby_names = ' . ($sync ? "'*'" : "''") . "\n";
    close $fh;
}

# A standby of $from: pg_basebackup -R over its socket, started; then $from
# turns synchronous if it was made with sync => 1.  %o{sync}: the same for
# this node's own standbys once it is promoted.
sub standby {
    my ($self, $from, %o) = @_;
    my $name = $o{name} // 'n' . $self->{n}++;
    my $dir = $self->_node_dir($name);
    my $node = { name => $name, dir => $dir, data => "$dir/data" };
    my ($rc, $out) = run_pg("$self->{bin}/pg_basebackup", '-D', $node->{data}, '-R',
                            '-X', 'stream', '-c', 'fast', '--no-sync', '-h', $from->{dir}, '-p',
                            $from->{port}, '-U', 'postgres', '-d',
                            "application_name=$name");
    die "pg_basebackup: $out" if $rc;
    # the clone carries the primary's settings: its own for after a promotion
    $self->_append_conf($node, 0);
    $node->{sync} = $o{sync};
    $self->_start($node, $o{port});
    push @{ $self->{nodes} }, $node;
    $self->set_sync($from, 1) if $from->{sync};
    return $node;
}

# Make $p's commits wait (sync 1) or not (sync 0) for a standby, at once.
sub set_sync {
    my ($self, $p, $sync) = @_;
    $self->psql($p, 'postgres', "ALTER SYSTEM SET synchronous_standby_names = "
                . ($sync ? "'*'" : "''"));
    $self->psql($p, 'postgres', 'SELECT pg_reload_conf()');
}

# Wait until $p streams to a standby (sync_state 'sync' when $sync).
sub wait_streaming {
    my ($self, $p, $sync, $timeout) = @_;
    my $deadline = time + ($timeout // 30);
    while (time < $deadline) {
        my $st = eval {
            $self->psql($p, 'postgres', 'SELECT state || \':\' || sync_state FROM '
                        . 'pg_stat_replication')
        } // '';
        return 1 if $st =~ /^streaming:(\w+)$/m && (!$sync || $1 eq 'sync');
        sleep 0.1;
    }
    return 0;
}

sub psql {
    my ($self, $node, $db, $q) = @_;
    my ($rc, $out) = run_pg("$self->{bin}/psql", '-XAtq', '-v', 'ON_ERROR_STOP=1',
                            '-h', $node->{dir}, '-p', $node->{port}, '-U', 'postgres',
                            '-d', $db, '-c', $q);
    die "psql on $node->{name}: $out" if $rc;
    chomp $out;
    return $out;
}

sub postmaster_pid {
    my ($self, $node) = @_;
    open my $fh, '<', "$node->{data}/postmaster.pid" or return 0;
    my $pid = <$fh> // 0;
    close $fh;
    chomp $pid;
    return $pid =~ /^\d+$/ ? $pid : 0;
}

# The postmaster's children (by /proc), so that what a SIGKILL leaves behind
# can be ended by id afterwards.
sub _children {
    my ($pid) = @_;
    my @c;
    opendir my $dh, '/proc' or return ();
    for my $p (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$p/stat" or next;
        my $st = <$fh> // '';
        close $fh;
        push @c, $p if $st =~ /^\d+ \(.*\) \S (\d+)/ && $1 == $pid;
    }
    return @c;
}

# SIGKILL to $node's postmaster alone (the machine is "lost"); its backends
# notice and exit; any still there later is killed by id in stop_all.
sub kill9 {
    my ($self, $node) = @_;
    my $pid = $node->{pid} || $self->postmaster_pid($node) or die "no postmaster pid";
    $node->{orphans} = [ _children($pid) ];
    # the System V segment (key, id on line 7 of postmaster.pid), removed
    # once the last backend is gone
    if (open my $fh, '<', "$node->{data}/postmaster.pid") {
        my @l = <$fh>;
        close $fh;
        ($node->{shmid}) = ($l[6] // '') =~ /^\s*\d+\s+(\d+)/;
    }
    kill 'KILL', $pid or die "kill -9 $pid: $!";
    $node->{running} = 0;
    $node->{killed} = 1;
    # the port stops answering at once (the listening socket was the postmaster's)
    return 1;
}

# Promote a standby (pg_ctl promote waits until it accepts writes).
sub promote {
    my ($self, $node) = @_;
    my ($rc, $out) = run_pg("$self->{bin}/pg_ctl", '-D', $node->{data}, '-w', '-t', '60',
                            'promote');
    die "pg_ctl promote $node->{name}: $out" if $rc;
    return 1;
}

# A libpq multi-host string over 127.0.0.1 naming @{$o{nodes}}.
sub conninfo {
    my ($self, %o) = @_;
    my @n = @{ $o{nodes} };
    return join(' ', 'host=' . join(',', ('127.0.0.1') x @n),
                'port=' . join(',', map { $_->{port} } @n), "dbname=$o{db}",
                'user=postgres', 'target_session_attrs=read-write',
                'connect_timeout=' . ($o{connect_timeout} // 5));
}

sub stop_all {
    my ($self) = @_;
    return if $self->{stopped}++;
    for my $node (@{ $self->{nodes} }) {
        if ($node->{running}) {
            run_pg("$self->{bin}/pg_ctl", '-D', $node->{data}, '-m', 'immediate', '-w',
                   'stop');
        }
        for my $pid (@{ $node->{orphans} // [] }) {
            # only what is still one of its backends (pids are reused)
            kill 'KILL', $pid if KmdcUtil::slurp("/proc/$pid/cmdline") =~ /^postgres: /;
        }
        if ($node->{shmid}) {
            my $deadline = time + 5;
            sleep 0.1 while time < $deadline
                && grep { KmdcUtil::slurp("/proc/$_/cmdline") =~ /^postgres: / } @{ $node->{orphans} };
            system('ipcrm', '-m', $node->{shmid}) if KmdcUtil::slurp('/proc/sysvipc/shm')
                =~ /^\s*\d+\s+\Q$node->{shmid}\E\s/m;
        }
    }
    remove_tree($self->{dir}) unless $ENV{KMDC_KEEP};
}

END {
    local $?;
    $_->stop_all for @all;
}

1;
