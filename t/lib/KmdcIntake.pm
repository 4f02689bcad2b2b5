# t/lib/KmdcIntake.pm - shared helpers of the send intake tests
# (t/045_preauth.t .. t/049_limits.t): cards issued with the built kmdcadm
# (optionally with a chosen serial, in a build with test hooks), envelopes
# sealed with the real kmdc, uploads with curl, and raw HTTP/1.1 over a
# socket of its own for the tests that compare answers byte for byte or
# stall an upload half-way.
#
# Needs the environment of t/run-suite (KMDC_SUITE_URL, KMDC_BUILD,
# KMDC_MASTER_KEY_FILE, PGHOST...).  Built on KmdcClient (run, sql, workdir).
package KmdcIntake;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IO::Select ();
use IO::Socket::INET ();
use JSON::PP ();
use Time::HiRes qw(time sleep);

use KmdcClient qw(run sql base_url url_path workdir kmdc_bin kmdcadm_bin slurp path newdir
                  files_in same card);
use KmdcUtil qw(random_bytes spew);

our @EXPORT_OK = qw(issue seal post_envelope fetch_all envelope_seq up_next
                    http_head raw_exchange raw_open raw_answer answer_text
                    server_addr write_bytes random_bytes snapshot count_rows
                    orphan_uploads live_leases pool_max);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $json = JSON::PP->new;

# write_bytes(FILE, BYTES) is KmdcUtil's spew; random_bytes is KmdcUtil's.
sub write_bytes { return spew(@_) }

# The host and port of a base URL (default: the Apache::Test server's).
sub server_addr {
    my ($url) = @_;
    $url //= base_url();
    my ($host, $port) = $url =~ m{^http://([^/:]+):(\d+)} or die "not an http URL: $url";
    return ($host, $port);
}

# issue(ADDR, %o) is KmdcClient's card(): issue a card and, unless
# inactive, activate it; %o: url, inactive, serial.
sub issue { return card(@_) }

# Seal $doc for $to (comma-separated addresses) with `kmdc seal` (offline: no
# outbox entry, nothing sent); the envelope's path.
sub seal {
    my ($card, $to, $doc) = @_;
    my $out = path('.kmdc');
    my $r = run({}, kmdc_bin(), '--card', $card->{file}, '-q', 'seal', '--to', $to,
                '-o', $out, $doc);
    die "kmdc seal failed: $r->{out}$r->{err}" if $r->{rc} // 1;
    return $out;
}

# The seq in an envelope file's header.
sub envelope_seq {
    my ($env) = @_;
    open my $fh, '<:raw', $env or die "$env: $!";
    read($fh, my $h, 40) == 40 or die "$env: short";
    close $fh;
    return unpack('Q>', substr($h, 16, 8));
}

# POST an envelope file raw with curl to URL/send (default the test
# server).  Returns {code, json (or undef), headers, secs}.
sub post_envelope {
    my ($env, %o) = @_;
    my $url = $o{url} // base_url();
    my $body = path('.body');
    my $hdrs = path('.hdrs');
    my $t0 = time;
    my $r = run({}, 'curl', '-sS', '--max-time', $o{max_time} // 120, '-o', $body,
                '-D', $hdrs, '-w', '%{http_code}', '-H',
                'Content-Type: application/vnd.kmdc.envelope', '--data-binary', "\@$env",
                "$url/send");
    my $secs = time - $t0;
    my $raw = slurp($body);
    my $j = eval { $json->decode($raw) };
    my %res = (code => ($r->{out} || 0) + 0, json => (ref $j eq 'HASH' ? $j : undef),
               headers => slurp($hdrs), body => $raw, secs => $secs, err => $r->{err});
    unlink $body, $hdrs;
    return \%res;
}

# kmdc fetch into a fresh folder.  %o: url (instead of the card's).
# Returns (exit status, folder, files in it, output).
sub fetch_all {
    my ($card, %o) = @_;
    my $d = newdir();
    my @url = $o{url} ? ('--url', $o{url}) : ();
    my $r = run({}, kmdc_bin(), '--card', $card->{file}, @url, '-q', 'fetch', '-d', $d);
    return ($r->{rc}, $d, [files_in($d)], "$r->{out}$r->{err}");
}

sub up_next {
    my ($card) = @_;
    return sql("SELECT up_next FROM cards WHERE serial = x'$card->{serial}'::bigint");
}

# The number of rows of a table.
sub count_rows {
    my ($table) = @_;
    return sql("SELECT count(*) FROM $table");
}

# Upload rows that belong to no message (a published message keeps its own).
sub orphan_uploads {
    return sql('SELECT count(*) FROM uploads u WHERE NOT EXISTS '
               . '(SELECT 1 FROM messages m WHERE m.upload_id = u.id)');
}

# Upload slots in use: leases that have not expired (expired ones are free,
# whether or not they were purged yet).
sub live_leases {
    return sql('SELECT count(*) FROM upload_leases WHERE expires_at > now()');
}

# Everything an upload may change: the whole rows of the given cards, the
# row counts of the tables a send writes, the slots in use.  A text for is().
sub snapshot {
    my (@serials) = @_;
    my $in = join(',', map { "x'$_'::bigint" } @serials);
    my $cards = @serials
        ? sql("SELECT c::text FROM cards c WHERE serial IN ($in) ORDER BY serial") : '';
    my @t = qw(receipts uploads upload_chunks messages deliveries audit_log);
    return join("\n", $cards, (map { "$_: " . count_rows($_) } @t),
                'upload slots in use: ' . live_leases());
}

# The KmdcDbPool maximum of the test server (t/conf/extra.conf.in).
sub pool_max {
    my $src = $ENV{KMDC_SRCDIR} // '.';
    my $conf = slurp("$src/t/conf/extra.conf.in");
    my ($max) = $conf =~ /^\s*KmdcDbPool\s+\d+\s+(\d+)\s*$/m;
    ($max) = $conf =~ /^\s*KmdcDbPoolMax\s+(\d+)\s*$/m unless defined $max;
    return $max // 8;    # the module's default
}

# ---- raw HTTP/1.1 --------------------------------------------------------------

# The head of POST {location}/send announcing $len body bytes.
sub http_head {
    my ($len, %o) = @_;
    my ($host, $port) = server_addr($o{url});
    my $path = $o{url} ? ($o{url} =~ m{^https?://[^/]+(/.*)?$})[0] // '' : url_path();
    my $ct = $o{type} // 'application/vnd.kmdc.envelope';
    return "POST $path/send HTTP/1.1\r\nHost: $host:$port\r\nContent-Type: $ct\r\n"
         . "Content-Length: $len\r\n\r\n";
}

# Open a fresh connection and write $bytes (all of them); the socket.
sub raw_open {
    my ($bytes, %o) = @_;
    my ($host, $port) = server_addr($o{url});
    my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp',
                                  Timeout => 10)
        or die "connect $host:$port: $!";
    binmode $s;
    my $off = 0;
    while ($off < length $bytes) {
        my $w = syswrite($s, $bytes, length($bytes) - $off, $off);
        die "write: $!" unless defined $w;
        $off += $w;
    }
    return $s;
}

# Read one answer from a socket within $secs seconds: {status, status_line,
# headers (["Name: value", ...] in order), body, closed}, or undef when no
# complete answer came in time (then {partial} holds what came).
sub raw_answer {
    my ($s, $secs) = @_;
    my $sel = IO::Select->new($s);
    my $deadline = time + $secs;
    my ($buf, $eof) = ('', 0);
    my ($head, $need, $chunked);
    while (1) {
        if (!defined $head && $buf =~ /\r\n\r\n/) {
            my $i = index($buf, "\r\n\r\n");
            $head = substr($buf, 0, $i);
            $buf = substr($buf, $i + 4);
            ($need) = $head =~ /^Content-Length:\s*(\d+)\s*$/mi;
            $chunked = $head =~ /^Transfer-Encoding:\s*chunked\s*$/mi;
        }
        if (defined $head) {
            last if defined $need && length $buf >= $need;
            last if $chunked && $buf =~ /(?:^|\r\n)0\r\n\r\n\z/;
            last if !defined $need && !$chunked && $eof;
        }
        last if $eof;
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($s, my $piece, 65536);
        if (!$n) { $eof = 1; next }
        $buf .= $piece;
    }
    return undef unless defined $head;
    my ($status_line, @hl) = split /\r\n/, $head;
    my ($status) = $status_line =~ m{^HTTP/\d\.\d (\d{3})};
    my $body = $buf;
    if ($chunked) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r]*\r\n//) {
            my $n = hex $1;
            last if $n == 0;
            $out .= substr($body, 0, $n);
            $body = substr($body, $n + 2);
        }
        $body = $out;
    } elsif (defined $need) {
        $body = substr($body, 0, $need);
    }
    return { status => ($status // 0) + 0, status_line => $status_line, headers => \@hl,
             body => $body };
}

# One request on a fresh connection, answered within $o{timeout} (30 s):
# the answer of raw_answer, or {status => 0, ...} when none came.
sub raw_exchange {
    my ($bytes, %o) = @_;
    my $s = raw_open($bytes, %o);
    my $a = raw_answer($s, $o{timeout} // 30);
    close $s;
    return $a // { status => 0, status_line => '(no answer)', headers => [], body => '' };
}

# An answer as one text, every header but Date in the order sent.
sub answer_text {
    my ($a) = @_;
    return join("\n", $a->{status_line}, (grep { !/^Date:/i } @{ $a->{headers} }), '',
                $a->{body});
}

1;
