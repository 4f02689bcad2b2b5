# t/lib/KmdcUtil.pm - the one copy of the small helpers every Perl test
# module and test needs: running a command, psql, reading and writing files,
# a scratch folder, a free port, polling, random bytes, and issuing a card
# with the built kmdcadm.  KmdcTest, KmdcClient, KmdcCluster, KmdcIntake and
# KmdcHA import from here (and re-export what their tests import from them).
#
# Needs the environment of t/run-suite for the kmdcadm helpers (KMDC_BUILD,
# KMDC_MASTER_KEY_FILE) and for sql() (PGHOST, PGPORT, PGDATABASE, PGUSER).
package KmdcUtil;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use File::Spec ();
use File::Temp qw(tempdir);
use IO::Socket::INET ();
use POSIX ();
use Time::HiRes qw(sleep time);

our @EXPORT_OK = qw(run run3 timed sql slurp spew workdir free_port wait_until
                    random_bytes build kmdc_bin kmdcadm_bin kmdcadm_issue);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

# The build tree under test and its programs.
sub build {
    return $ENV{KMDC_BUILD} // die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
}
sub kmdc_bin { return build() . '/kmdc/kmdc' }
sub kmdcadm_bin { return build() . '/admin/kmdcadm' }

# Run a command to its end: (exit status, stdout and stderr together).  An
# exec failure is status 127 with the reason in the output.
sub run {
    my @argv = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT or POSIX::_exit(127);
        exec { $argv[0] } @argv or do { print "exec $argv[0]: $!\n"; POSIX::_exit(127) };
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    return ($? >> 8, $out);
}

# Run a command with stdout and stderr apart: (exit status, stdout, stderr).
sub run3 {
    my @argv = @_;
    my $err = File::Spec->catfile(File::Spec->tmpdir, "kmdc-run3-$$-" . int(rand(1e9)));
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>', $err or POSIX::_exit(127);
        exec { $argv[0] } @argv or do { print STDERR "exec $argv[0]: $!\n"; POSIX::_exit(127) };
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    my $rc = $? >> 8;
    my $e = slurp($err);
    unlink $err;
    return ($rc, $out, $e);
}

# run() with the wall time: (exit status, output, seconds).
sub timed {
    my $t0 = time;
    my ($rc, $out) = run(@_);
    return ($rc, $out, time - $t0);
}

# One SQL statement through psql (the environment's database unless @psql
# names another, e.g. '-d', DB); its rows as "a|b" lines, chomped.  Dies
# when psql fails.
sub sql {
    my ($q, @psql) = @_;
    my ($rc, $out) = run('psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', @psql, '-c', $q);
    die "psql failed: $out" if $rc;
    chomp $out;
    return $out;
}

# A file's bytes ('' when it cannot be read).
sub slurp {
    my ($file) = @_;
    open my $fh, '<:raw', $file or return '';
    local $/;
    my $s = <$fh>;
    close $fh;
    return $s // '';
}

# Write bytes to a file (and set its mode when given); dies on failure.
# Returns the path.
sub spew {
    my ($file, $bytes, $mode) = @_;
    open my $fh, '>:raw', $file or die "cannot write $file: $!";
    print {$fh} $bytes;
    close $fh or die "cannot write $file: $!";
    if (defined $mode) {
        chmod $mode, $file or die "chmod $file: $!";
    }
    return $file;
}

# The test's scratch folder below $TMPDIR, mode 0700, made on the first call
# (removed at the end unless KMDC_KEEP=1).
my $dir;
sub workdir {
    $dir //= tempdir('kmdc-t-XXXXXX', TMPDIR => 1, CLEANUP => !($ENV{KMDC_KEEP} // 0));
    chmod 0700, $dir;
    return $dir;
}

# A TCP port nobody listens on, on 127.0.0.1 and 127.0.0.2 (the addresses
# of 127/8 the tests use).
sub free_port {
    for (1 .. 50) {
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                      LocalPort => 0, Proto => 'tcp', ReuseAddr => 1)
            or die "cannot probe a free port: $!";
        my $port = $s->sockport;
        close $s;
        my $t = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.2',
                                      LocalPort => $port, Proto => 'tcp', ReuseAddr => 1);
        next unless $t;
        close $t;
        return $port;
    }
    die "no free port found";
}

# Poll $cond every 20 ms for up to $secs seconds; its last value.
sub wait_until {
    my ($secs, $cond) = @_;
    my $end = time + $secs;
    while (1) {
        my $v = $cond->();
        return $v if $v || time > $end;
        sleep 0.02;
    }
}

sub random_bytes {
    my ($n) = @_;
    open my $fh, '<:raw', '/dev/urandom' or die "/dev/urandom: $!";
    my $got = read($fh, my $b, $n);
    die "short read from /dev/urandom" unless defined $got && $got == $n;
    close $fh;
    return $b;
}

# Issue a card with the built kmdcadm; dies on failure.  %o: address, url,
# file (where the card is written), keys (a list of "ID:FILE", default the
# suite's master key 1), db (a conninfo for --db), serial (16 hex digits
# through KMDC_TEST_SERIAL: only a build with test hooks honours it).
# Returns {address, serial, code, file, out}.
sub kmdcadm_issue {
    my (%o) = @_;
    my @keys = @{ $o{keys} // [] };
    unless (@keys) {
        my $mkey = $ENV{KMDC_MASTER_KEY_FILE} or die "KMDC_MASTER_KEY_FILE not set\n";
        @keys = ("1:$mkey");
    }
    my @argv = (kmdcadm_bin(), (defined $o{db} ? ('--db', $o{db}) : ()),
                (map { ('--master-key', $_) } @keys),
                'issue', '--address', $o{address}, '--url', $o{url}, '--out', $o{file});
    my ($rc, $out);
    {
        local $ENV{KMDC_TEST_SERIAL} = $o{serial} if defined $o{serial};
        ($rc, $out) = run(@argv);
    }
    die "kmdcadm issue $o{address} failed: $out" if $rc;
    my ($serial) = $out =~ /^serial:\s*([0-9a-f]{16})$/m or die "no serial in: $out";
    my ($code) = $out =~ /^access code:\s*([0-9A-Z]{5}-[0-9A-Z]{5}(?:-[0-9A-Z])?)$/m
        or die "no access code in: $out";
    return { address => $o{address}, serial => $serial, code => $code, file => $o{file},
             out => $out };
}

1;
