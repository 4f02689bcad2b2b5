# t/048_slots.t - KmdcMaxUploadsPerCard (4 in the test server: the default)
# counts the uploads of one card: two cards never share their slots, even
# when their serials agree in a 32-bit fold (serial ^ (serial >> 32)).
#
# Cards 0000000100000001 and 0000000200000002 (both fold to 0) are issued
# through kmdcadm's test hook KMDC_TEST_SERIAL (configure --enable-test-hooks;
# without it the tests are skipped).  Card one starts 4 uploads that stall
# half-way through their payload; while they stall its 5th upload answers
# 429 (its 4 slots are taken), card two relays an envelope (201), starts 4
# uploads of its own that stall half-way without an answer (none is refused
# with 429), and its 5th answers 429.  When the connections close, every
# slot is free again, nothing is left behind and no counter was spent by the
# stalled uploads.  The stalls end well before mod_reqtimeout's body timeout
# (20 s).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use IO::Select ();
use JSON::PP ();
use Time::HiRes qw(time sleep);
use KmdcClient qw(sql document path slurp same wait_until);
use KmdcIntake qw(:all);

for my $v (qw(KMDC_SUITE_URL KMDC_BUILD KMDC_MASTER_KEY_FILE PGHOST)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $MAX = 4;                         # KmdcMaxUploadsPerCard (default)
my $json = JSON::PP->new;
my @S = ('0000000100000001', '0000000200000002');
my @socks;

sub fold { my $v = hex(substr($_[0], 0, 8)) ^ hex(substr($_[0], 8, 8)); return $v }
is(fold($S[0]), fold($S[1]), "the serials $S[0] and $S[1] fold to the same 32 bits");

my $one = issue('sl-one', serial => $S[0]);
my $two = issue('sl-two', serial => $S[1]);
my $rcpt = issue('sl-rcpt');
my $hooks = $one->{serial} eq $S[0] && $two->{serial} eq $S[1];

# Open an upload of $env that sends its headers, the prefix and $part
# payload bytes of the envelope, then stalls.
sub stall_upload {
    my ($env, $part) = @_;
    my $bytes = slurp($env);
    my $kb = unpack('N', substr($bytes, 40, 4));
    return raw_open(http_head(length $bytes) . substr($bytes, 0, 44 + $kb + $part));
}

# Wait up to 10 s until $n upload slots are in use: live lease rows, or
# (the slots before schema 2) granted advisory locks.  Only a sync point.
sub wait_slots {
    my ($n) = @_;
    return wait_until(10, sub {
        live_leases() + sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            . "AND granted") >= $n });
}

# A stalled upload's answer if one came within $secs, else undef.
sub answer_of {
    my ($s, $secs) = @_;
    return raw_answer($s, $secs);
}

sub describe {
    my ($a) = @_;
    return 'no answer' unless $a;
    my $j = eval { $json->decode($a->{body}) };
    return "$a->{status} " . (ref $j eq 'HASH' ? $j->{error} // '' : $a->{body});
}

SKIP: {
    skip 'kmdcadm ignores KMDC_TEST_SERIAL: configure --enable-test-hooks (scripts/check '
         . 'does) to run the slot tests', 5 unless $hooks;

    my $doc = document(path('.doc'), 300000, 'sl');     # 5 chunks
    my $part = 70000;                                   # one chunk and a bit
    my @one_env = map { seal($one, 'sl-rcpt', $doc) } 1 .. $MAX + 1;
    my @two_env = map { seal($two, 'sl-rcpt', $doc) } 1 .. $MAX + 2;
    my %up = (one => up_next($one), two => up_next($two));
    my $orphans = orphan_uploads();

    subtest 'card one fills its slots' => sub {
        push @socks, stall_upload($one_env[$_], $part) for 0 .. $MAX - 1;
        # each stalled upload took a slot once its keyblock authenticated
        wait_slots($MAX) or diag('the stalled uploads of card one did not show as slots in 10 s');
        my @early = grep { defined } map { answer_of($_, 0.2) } @socks;
        is(scalar @early, 0, "its $MAX stalled uploads are not answered")
            or diag(join '; ', map { describe($_) } @early);
        my $res = post_envelope($one_env[$MAX], max_time => 15);
        is("$res->{code} " . ($res->{json} ? $res->{json}{error} // '' : ''),
           '429 too_many_uploads', 'its 5th upload answers 429 too_many_uploads')
            or diag($res->{body});
        done_testing();
    };

    subtest 'card two, whose serial folds alike, has its own slots' => sub {
        my $res = post_envelope($two_env[0], max_time => 15);
        is($res->{code}, 201, 'card two relays an envelope (201) while card one\'s uploads stall')
            or diag($res->{body});
        my @mine = map { stall_upload($two_env[$_], $part) } 1 .. $MAX;
        push @socks, @mine;
        wait_slots(2 * $MAX) or diag('the stalled uploads did not show as slots in 10 s');
        for my $i (0 .. $MAX - 1) {
            my $a = answer_of($mine[$i], 1.5 / $MAX);
            ok(!$a, 'card two\'s stalled upload ' . ($i + 1) . ' is not answered (got past '
               . 'authentication, no 429)') or diag(describe($a));
        }
        $res = post_envelope($two_env[$MAX + 1], max_time => 15);
        is("$res->{code} " . ($res->{json} ? $res->{json}{error} // '' : ''),
           '429 too_many_uploads', "card two's upload beyond its $MAX stalled ones answers 429")
            or diag($res->{body});
        done_testing();
    };

    close $_ for @socks;
    @socks = ();

    subtest 'closing the stalled uploads frees everything' => sub {
        ok(wait_until(10, sub { live_leases() == 0 && orphan_uploads() == $orphans }),
           'no slot is held and no unpublished upload row is left');
        is(up_next($one), $up{one}, 'card one spent no counter on its stalled uploads');
        is(up_next($two), $up{two} + 1, 'card two spent only the counter it relayed');
        done_testing();
    };

    subtest 'both cards upload again' => sub {
        # a 429 spends nothing: the same envelope may be sent again
        my ($r1, $r2);
        wait_until(10, sub { $r1 = post_envelope($one_env[$MAX], max_time => 15);
                             $r1->{code} != 429 });
        is($r1->{code}, 201, 'card one\'s 5th envelope, refused with 429 before, is relayed')
            or diag($r1->{body});
        wait_until(10, sub { $r2 = post_envelope($two_env[$MAX + 1], max_time => 15);
                             $r2->{code} != 429 });
        is($r2->{code}, 201, 'card two\'s envelope refused with 429 before is relayed')
            or diag($r2->{body});
        done_testing();
    };

    subtest 'the recipient gets the three relayed documents' => sub {
        my ($rc, $d, $files, $out) = fetch_all($rcpt);
        is($rc, 0, 'kmdc fetch succeeds') or diag($out);
        is(scalar @$files, 3, 'three documents') or diag("files: @$files");
        is(scalar(grep { same("$d/$_", $doc) } @$files), scalar @$files,
           'each is the document byte for byte');
        done_testing();
    };
}

done_testing();

END { close $_ for @socks }
