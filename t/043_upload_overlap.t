# t/043_upload_overlap.t - the payload's rows are written while the next one is
# read, and still no database connection is held while the datacenter waits
# for the client's bytes (docs/PROTOCOL.md 6.3).
#
# A 12 MiB document makes an envelope of four payload rows (about 4 MiB
# each).  A client sends its headers and the first 9 MiB of the envelope
# (two rows written, the third begun), pauses 3 s, then sends the rest: during
# the pause kmdc_db_pool_in_use (the metrics page, shared by every child)
# stays at 0, and the upload is then relayed byte for byte; once with
# Content-Length, once chunked.  A client that goes away during the pause
# leaves nothing behind (no upload row, no slot, no connection in use).  An
# upload whose slot another upload took during its pause (its lease's holder
# changed, as when it expired and was taken) answers 429 too_many_uploads when
# its next row is written, publishes nothing and leaves no row behind.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Compare qw(compare);
use JSON::PP ();
use LWP::UserAgent ();
use Time::HiRes qw(time sleep);
use KmdcClient qw(sql document path slurp wait_until);
use KmdcIntake qw(:all);

for my $v (qw(KMDC_SUITE_URL KMDC_BUILD KMDC_MASTER_KEY_FILE PGHOST)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

$SIG{PIPE} = 'IGNORE';               # a server that answered early closes
my $MiB = 1 << 20;
my $PAUSE = 3;                       # seconds; mod_reqtimeout allows 20
my $json = JSON::PP->new;
my ($host, $port) = server_addr();
my $ua = LWP::UserAgent->new(timeout => 10, keep_alive => 0);

# The pool's connections in use in every child, from the metrics page.
sub in_use {
    my $res = $ua->get("http://$host:$port/kmdc-metrics");
    return undef unless $res->is_success;
    my ($n) = $res->decoded_content =~ /^kmdc_db_pool_in_use (\d+)$/m;
    return $n;
}

# The largest reading of in_use over $secs seconds (a reading every 0.25 s);
# undef when the page could not be read.
sub max_in_use {
    my ($secs) = @_;
    my ($max, $end) = (0, time + $secs);
    while (time < $end) {
        my $n = in_use();
        return undef unless defined $n;
        $max = $n if $n > $max;
        sleep 0.25;
    }
    return $max;
}

# Write all of $bytes to $s; 0 when the server closed (it answered early).
sub put {
    my ($s, $bytes) = @_;
    my $off = 0;
    while ($off < length $bytes) {
        my $w = syswrite($s, $bytes, length($bytes) - $off, $off);
        return 0 unless defined $w;
        $off += $w;
    }
    return 1;
}

# $bytes as chunks of 64 KiB of a chunked body ($last: and the terminator).
sub chunked {
    my ($bytes, $last) = @_;
    my $out = '';
    for (my $off = 0; $off < length $bytes; $off += 65536) {
        my $piece = substr($bytes, $off, 65536);
        $out .= sprintf("%x\r\n", length $piece) . $piece . "\r\n";
    }
    return $last ? $out . "0\r\n\r\n" : $out;
}

# Open an upload of $bytes that sends its headers and the first $part bytes
# ($how: 'length' or 'chunked'); the socket.
sub start_upload {
    my ($bytes, $part, $how) = @_;
    if ($how eq 'chunked') {
        my $head = http_head(0);
        $head =~ s/Content-Length: 0\r\n/Transfer-Encoding: chunked\r\n/ or die;
        return raw_open($head . chunked(substr($bytes, 0, $part), 0));
    }
    return raw_open(http_head(length $bytes) . substr($bytes, 0, $part));
}

# The rest of the upload after $part bytes.
sub rest_of {
    my ($bytes, $part, $how) = @_;
    my $rest = substr($bytes, $part);
    return $how eq 'chunked' ? chunked($rest, 1) : $rest;
}

sub describe {
    my ($a) = @_;
    return 'no answer' unless $a;
    my $j = eval { $json->decode($a->{body}) };
    return "$a->{status} " . (ref $j eq 'HASH' ? $j->{error} // '' : $a->{body});
}

my $sender = issue('ov-sender');
my $rcpt = issue('ov-rcpt');
my $doc = document(path('.doc'), 12 * $MiB, 'ov');
my $orphans = orphan_uploads();

for my $how (qw(length chunked)) {
    my $env = seal($sender, 'ov-rcpt', $doc);
    my $bytes = slurp($env);
    my $part = 44 + unpack('N', substr($bytes, 40, 4)) + 9 * $MiB;
    my $name = $how eq 'chunked' ? 'chunked' : 'Content-Length';
    my $s = start_upload($bytes, $part, $how);
    sleep 1;                         # the 9 MiB read, two rows written
    my $early = raw_answer($s, 0.1);
    ok(!$early, "$name: the upload paused after 9 MiB is not answered")
        or diag(describe($early));
    my $max = max_in_use($PAUSE - 1);
    is($max, 0, "$name: no database connection in use while it pauses (PROTOCOL 6.3)");
    ok(put($s, rest_of($bytes, $part, $how)), "$name: the rest of the envelope is sent");
    my $a = raw_answer($s, 60);
    close $s;
    is($a ? $a->{status} : 0, 201, "$name: the 12 MiB upload is relayed (201)")
        or diag(describe($a));
    my ($rc, $d, $files, $out) = fetch_all($rcpt);
    ok($rc == 0 && @$files == 1 && compare("$d/$files->[0]", $doc) == 0,
       "$name: the recipient fetches the 12 MiB document byte for byte")
        or diag("rc $rc, files @$files: $out");
}

{
    # the client goes away during the pause
    my $env = seal($sender, 'ov-rcpt', $doc);
    my $bytes = slurp($env);
    my $part = 44 + unpack('N', substr($bytes, 40, 4)) + 9 * $MiB;
    my $up = up_next($sender);
    my $s = start_upload($bytes, $part, 'length');
    sleep 1;
    close $s;
    ok(wait_until(10, sub { orphan_uploads() == $orphans && live_leases() == 0
                            && (in_use() // -1) == 0 }),
       'a client gone mid-upload: its rows dropped, its slot free, no connection in use')
        or diag('orphans ' . orphan_uploads() . " (was $orphans), slots "
                . live_leases() . ', in use ' . (in_use() // '?'));
    is(up_next($sender), $up, 'a client gone mid-upload: its counter is not spent');
}

{
    # the slot taken by another upload during the pause: found when the next
    # row is written
    my $env = seal($sender, 'ov-rcpt', $doc);
    my $bytes = slurp($env);
    my $part = 44 + unpack('N', substr($bytes, 40, 4)) + 9 * $MiB;
    my $up = up_next($sender);
    my $messages = count_rows('messages');
    my $ser = "x'$sender->{serial}'::bigint";
    my $s = start_upload($bytes, $part, 'length');
    sleep 1;
    is(sql("UPDATE upload_leases SET holder = holder + 1 WHERE serial = $ser "
           . "AND expires_at > now() RETURNING 1"), 1,
       'a slot lost mid-upload: another upload holds it now');
    put($s, rest_of($bytes, $part, 'length'));
    my $a = raw_answer($s, 60);
    close $s;
    my $j = $a ? eval { $json->decode($a->{body}) } : undef;
    is(($a ? $a->{status} : 0) . ' ' . (ref $j eq 'HASH' ? $j->{error} // '' : ''),
       '429 too_many_uploads', 'a slot lost mid-upload: 429 too_many_uploads')
        or diag(describe($a));
    ok(wait_until(10, sub { orphan_uploads() == $orphans }),
       'a slot lost mid-upload: its rows dropped')
        or diag('orphans ' . orphan_uploads() . " (was $orphans)");
    is(up_next($sender) . ' ' . count_rows('messages'), "$up $messages",
       'a slot lost mid-upload: nothing published, its counter not spent');
    sql("DELETE FROM upload_leases WHERE serial = $ser");
}

done_testing();
