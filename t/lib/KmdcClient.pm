# t/lib/KmdcClient.pm - shared helpers of the end-to-end tests of the kmdc
# client (t/100_client.t, t/110_client_crash.t): the real kmdc and kmdcadm
# binaries against the Apache::Test httpd and the private PostgreSQL of
# t/run-suite.
#
# Commands run with their standard output and error in files (never in a
# pipe that could fill up), optionally under /usr/bin/time for the peak RSS,
# in the foreground or in the background.  workdir, sql, slurp, wait_until,
# kmdc_bin and kmdcadm_bin are KmdcUtil's, re-exported.  Documents are written by a
# streaming writer (1 MiB at a time), never built in Perl memory.
package KmdcClient;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use Fcntl qw(O_WRONLY O_CREAT O_TRUNC);
use JSON::PP ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(time sleep);

use KmdcUtil qw(kmdc_bin kmdcadm_bin workdir sql slurp wait_until kmdcadm_issue);

our @EXPORT_OK = qw(kmdc_bin kmdcadm_bin base_url url_path workdir run start finish
                    is_running sql card document files_in card_info db_card sign_header
                    curl_json curl_get_file curl_delete mailbox httpd_children_hwm
                    free_disk_kib lock_held wait_until slurp file_size leftovers
                    has_test_hooks module_has_asan path newdir same explain_run);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $json = JSON::PP->new;
my $nrun = 0;

# The handler's base URL (http://127.0.0.1:PORT/kmdc) and its path (/kmdc).
sub base_url {
    my $u = $ENV{KMDC_SUITE_URL} // die "KMDC_SUITE_URL not set: run t/run-suite BUILD_DIR\n";
    $u =~ s{/+$}{};
    return $u;
}
sub url_path {
    my ($p) = base_url() =~ m{^https?://[^/]+(/.*)?$};
    return $p // '';
}

# A fresh path in the scratch folder (nothing is created), with a suffix.
my $nfile = 0;
sub path {
    $nfile++;
    return workdir() . "/f$nfile" . ($_[0] // '');
}

# A fresh empty folder in the scratch folder.
sub newdir {
    my $d = path('.d');
    mkdir $d, 0700 or die "$d: $!";
    return $d;
}

# Are two files byte for byte the same?  (cmp, never read into memory.)
sub same {
    my ($x, $y) = @_;
    my $r = run({}, 'cmp', '-s', $x, $y);
    return defined $r->{rc} && $r->{rc} == 0;
}

# A one-line account of a finished command, for diag().
sub explain_run {
    my ($r) = @_;
    return sprintf('exit %s signal %d after %.1f s; stdout: %s; stderr: %s', $r->{rc} // '-',
                   $r->{sig}, $r->{secs}, $r->{out}, $r->{err});
}

sub file_size { return -s $_[0] // 0 }

# Start a command in the background.  %o: env (hash ref of variables to set,
# undef values delete), rss (run it under /usr/bin/time -f %M), stdin (a
# path; default /dev/null).  Returns a handle for finish().
sub start {
    my ($o, @argv) = @_;
    $o //= {};
    $nrun++;
    my $w = workdir();
    my %h = (out => "$w/run$nrun.out", err => "$w/run$nrun.err", argv => [@argv]);
    if ($o->{rss}) {
        $h{rssf} = "$w/run$nrun.rss";
        unshift @argv, '/usr/bin/time', '-f', '%M', '-o', $h{rssf};
    }
    $h{t0} = time;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        for my $k (keys %{ $o->{env} // {} }) {
            if (defined $o->{env}{$k}) { $ENV{$k} = $o->{env}{$k} } else { delete $ENV{$k} }
        }
        open STDIN, '<', $o->{stdin} // '/dev/null' or die "stdin: $!";
        open STDOUT, '>', $h{out} or die "$h{out}: $!";
        open STDERR, '>', $h{err} or die "$h{err}: $!";
        exec { $argv[0] } @argv or do { print STDERR "exec $argv[0]: $!\n"; POSIX::_exit(127) };
    }
    $h{pid} = $pid;
    return \%h;
}

# Is the background command still running?  (Reaps it when it ended.)
sub is_running {
    my ($h) = @_;
    return 0 if defined $h->{status};
    my $r = waitpid($h->{pid}, WNOHANG);
    return 1 if $r == 0;
    $h->{status} = $?;
    $h->{t1} = time;
    return 0;
}

# Wait for a command started with start(); returns a hash: rc (exit status,
# undef when killed), sig (the signal that killed it, 0 when none), out, err,
# secs (wall time), rss_kib (peak RSS in KiB with rss), argv.
sub finish {
    my ($h) = @_;
    unless (defined $h->{status}) {
        waitpid($h->{pid}, 0);
        $h->{status} = $?;
        $h->{t1} = time;
    }
    my $st = $h->{status};
    my %r = (argv => $h->{argv}, secs => $h->{t1} - $h->{t0}, out => slurp($h->{out}),
             err => slurp($h->{err}), sig => $st & 127, rc => ($st & 127) ? undef : $st >> 8);
    if ($h->{rssf}) {
        # GNU time writes "Command exited with non-zero status N" or
        # "Command terminated by signal N" before the figure
        my $t = slurp($h->{rssf});
        if ($t =~ /terminated by signal (\d+)/) {
            $r{sig} = $1 + 0;
            $r{rc} = undef;
        } elsif ($t =~ /exited with non-zero status (\d+)/) {
            $r{rc} = $1 + 0;
        }
        ($r{rss_kib}) = $t =~ /(\d+)\s*\z/;
    }
    unlink grep { defined } @{$h}{qw(out err rssf)};
    return \%r;
}

# Run a command to its end: see finish().
sub run {
    my ($o, @argv) = @_;
    return finish(start($o, @argv));
}

# Issue a card with kmdcadm and (unless inactive) activate it with kmdc.
# %o: url (the datacenter written into the card, default the test server's),
# inactive, serial (16 hex digits, through KMDC_TEST_SERIAL: only a build with
# test hooks honours it; compare the returned serial).  The card lives in its
# own folder (its lock files and outbox go beside it).  Returns {addr, file,
# dir, serial, code}.
sub card {
    my ($addr, %o) = @_;
    my $cdir = workdir() . "/card-$addr";
    mkdir $cdir, 0700 or die "$cdir: $!";
    my $i = kmdcadm_issue(address => $addr, url => $o{url} // base_url(),
                          file => "$cdir/$addr.card", serial => $o{serial});
    unless ($o{inactive}) {
        my $r = run({}, kmdc_bin(), '--card', $i->{file}, '-q', 'activate', $i->{code});
        die "kmdc activate $addr failed: $r->{out}$r->{err}" if $r->{rc} // 1;
    }
    return { addr => $addr, file => $i->{file}, dir => $cdir, serial => $i->{serial},
             code => $i->{code} };
}

# Write a document of $size bytes to $path without holding it in memory:
# 1 MiB of random bytes, each MiB stamped with its index and the seed so that
# no two MiB (and no two documents) are alike.  Returns $path.
sub document {
    my ($path, $size, $seed) = @_;
    $seed //= $path;
    my $mib = 1 << 20;
    open my $rnd, '<:raw', '/dev/urandom' or die "/dev/urandom: $!";
    my $got = read($rnd, my $block, $mib);
    die "short read from /dev/urandom" unless defined $got && $got == $mib;
    close $rnd;
    sysopen(my $fh, $path, O_WRONLY | O_CREAT | O_TRUNC, 0600) or die "$path: $!";
    binmode $fh;
    my ($left, $i) = ($size, 0);
    while ($left > 0) {
        my $n = $left < $mib ? $left : $mib;
        my $stamp = pack('Q>', $i++) . substr($seed . ('.' x 24), 0, 24);
        substr($block, 0, 32) = $stamp;
        my $piece = $n == $mib ? $block : substr($block, 0, $n);
        my $off = 0;
        while ($off < $n) {
            my $w = syswrite($fh, $piece, $n - $off, $off) // die "$path: $!";
            $off += $w;
        }
        $left -= $n;
    }
    close $fh or die "$path: $!";
    return $path;
}

# The visible files of a folder, sorted (names starting with '.' are
# temp files; see leftovers()).
sub files_in {
    my ($d) = @_;
    opendir my $dh, $d or die "$d: $!";
    my @f = sort grep { !/^\./ } readdir $dh;
    closedir $dh;
    return @f;
}

# Temp files left in a folder: the client's ".kmdc-*.part" (fetch), ".*.tmp"
# (card saves), and names ending in -XXXXXX style suffixes of seal.
sub leftovers {
    my ($d) = @_;
    opendir my $dh, $d or return ();
    my @f = sort grep { /^\.kmdc-.*\.part$/ || /^\..*\.tmp$/ || /\.kmdc-[A-Za-z0-9]{6}$/ }
        readdir $dh;
    closedir $dh;
    return @f;
}

# `kmdc card` as a hash (serial, up_next, down_next, outbox, ...).
sub card_info {
    my ($card) = @_;
    my $r = run({}, kmdc_bin(), '--card', $card->{file}, 'card');
    die "kmdc card failed: $r->{err}" if $r->{rc} // 1;
    my %h;
    for my $l (split /\n/, $r->{out}) {
        my ($k, $v) = $l =~ /^([a-z_]+):\s*(.*)$/ or next;
        if ($k eq 'outbox_entry') { push @{ $h{outbox_entries} }, $v } else { $h{$k} = $v }
    }
    $h{outbox_entries} //= [];
    return \%h;
}

# The card's row: {up_next, down_next, status, receipts (count)}.
sub db_card {
    my ($card) = @_;
    my $s = "x'$card->{serial}'::bigint";
    my $row = sql("SELECT up_next, down_next, status, "
                  . "(SELECT count(*) FROM receipts WHERE serial = $s) "
                  . "FROM cards WHERE serial = $s");
    my @v = split /\|/, $row;
    return { up_next => $v[0], down_next => $v[1], status => $v[2], receipts => $v[3] };
}

# "Authorization: ..." for a request, from `kmdc sign`.
sub sign_header {
    my ($card, $method, $target, @body) = @_;
    my $r = run({}, kmdc_bin(), '--card', $card->{file}, 'sign', $method, $target, @body);
    die "kmdc sign failed: $r->{err}" if $r->{rc} // 1;
    my $h = $r->{out};
    chomp $h;
    return $h;
}

# A signed GET with curl; (HTTP status, decoded JSON or undef, raw body).
sub curl_json {
    my ($card, $method, $rel) = @_;
    my $target = url_path() . $rel;
    my $body = workdir() . '/curl.body';
    my $r = run({}, 'curl', '-sS', '-X', $method, '-o', $body, '-w', '%{http_code}',
                '-H', sign_header($card, $method, $target), base_url() . $rel);
    my $raw = slurp($body);
    unlink $body;
    my $j = eval { $json->decode($raw) };
    return (($r->{out} || 0) + 0, $j, $raw);
}

# A signed GET of $rel into $path with curl; the HTTP status.
sub curl_get_file {
    my ($card, $rel, $path) = @_;
    my $target = url_path() . $rel;
    my $r = run({}, 'curl', '-sS', '-o', $path, '-w', '%{http_code}',
                '-H', sign_header($card, 'GET', $target), base_url() . $rel);
    return ($r->{out} || 0) + 0;
}

# A signed DELETE with curl; the HTTP status.
sub curl_delete {
    my ($card, $rel) = @_;
    my ($code) = curl_json($card, 'DELETE', $rel);
    return $code;
}

# The card's mailbox listing through curl + kmdc sign: the deliveries
# (array of {id, seq, size, created}) in the server's order, or undef.
sub mailbox {
    my ($card) = @_;
    my ($code, $j) = curl_json($card, 'GET', "/mailbox/$card->{serial}");
    return undef unless $code == 200 && $j && ref $j->{deliveries} eq 'ARRAY';
    return $j->{deliveries};
}

# The Apache::Test server's children and their VmHWM (KiB): (max, "pid=KiB ...").
sub httpd_children_hwm {
    my $src = $ENV{KMDC_SRCDIR} // '.';
    my $pid = slurp("$src/t/logs/httpd.pid");
    ($pid) = $pid =~ /(\d+)/ or return (undef, 'no t/logs/httpd.pid');
    my ($max, @seen) = (0);
    opendir my $dh, '/proc' or return (undef, 'no /proc');
    for my $p (grep { /^\d+$/ } readdir $dh) {
        my $st = slurp("/proc/$p/status");
        my ($pp) = $st =~ /^PPid:\s*(\d+)/m or next;
        next unless $pp == $pid;
        my ($hwm) = $st =~ /^VmHWM:\s*(\d+)\s*kB/m or next;
        push @seen, "$p=$hwm";
        $max = $hwm if $hwm > $max;
    }
    closedir $dh;
    return (@seen ? $max : undef, join(' ', @seen));
}

# Free space (KiB) of the file system holding $path.
sub free_disk_kib {
    my ($path) = @_;
    my $r = run({}, 'df', '-Pk', $path);
    my @l = split /\n/, $r->{out};
    my @f = split ' ', $l[-1] // '';
    return $f[3];
}

# Is a flock held on $file?  Reads /proc/locks (never takes the lock: a
# probe that took it could make a kmdc starting at that moment fail).
sub lock_held {
    my ($file) = @_;
    my @st = stat $file or return 0;
    my $ino = $st[1];
    for my $l (split /\n/, slurp('/proc/locks')) {
        return 1 if $l =~ /\bFLOCK\b.*\s[0-9a-f]+:[0-9a-f]+:$ino\s/;
    }
    return 0;
}

# Does this kmdc have the test-only commands (configure --enable-test-hooks)?
sub has_test_hooks {
    my $r = run({}, kmdc_bin(), 'test-mkcard', '--help');
    return defined $r->{rc} && $r->{rc} == 0;
}

# Was the module under test built with AddressSanitizer?  (t/run-suite then
# runs httpd with the ASan runtime preloaded.)
sub module_has_asan {
    my $m = $ENV{KMDC_MODULE} // return 0;
    my $r = run({}, 'nm', '-D', $m);
    return $r->{out} =~ /\sU __asan_init/ ? 1 : 0;
}

1;
