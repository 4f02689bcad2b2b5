# t/045_preauth.t - POST {location}/send before the keyblock authenticates:
# whatever the card behind the header's serial, one framing gets one answer.
#
# The matrix of the HTTP API's rule (docs/API.md, errors; docs/PROTOCOL.md 3.2:
# "a reader checks kb_len before it reads the keyblock"): card states
#   unknown serial, issued (never activated), suspended, revoked, active with
#   a spent seq (below up_next, its receipt for another envelope exists),
#   active at up_next, active at the window's last seq, active beyond the
#   window
# times framings
#   kb_len 0, 58 (one below the least), 16433 (one above the most),
#   0xffffffff (each followed by a few bytes): 400 bad_envelope;
#   the body ends right after the 40-byte header, or inside the keyblock
#   (kb_len 200, 100 bytes sent): 400 incomplete;
#   a whole random keyblock of a valid length, then the end: 403 rejected.
# For one framing every state gets a byte-identical answer (status line,
# every header but Date, body) on a fresh connection of its own (so
# connection reuse cannot differ), the expected status and code, and the
# database is unchanged: the known cards' rows, and the row counts of
# receipts, uploads, upload_chunks, messages, deliveries and audit_log, and
# the upload slots in use (live upload_leases).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use JSON::PP ();
use KmdcClient qw(sql document path);
use KmdcIntake qw(:all);

for my $v (qw(KMDC_SUITE_URL KMDC_BUILD KMDC_MASTER_KEY_FILE PGHOST)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $json = JSON::PP->new;
my $W = 64;     # KmdcSequenceWindow of the test server (the default)

# ---- the cards --------------------------------------------------------------

my $issued = issue('pa-issued', inactive => 1);
my $suspended = issue('pa-suspended');
my $revoked = issue('pa-revoked');
my $active = issue('pa-active');
is(run_adm('suspend', $suspended->{serial}), 0, 'setup: a card suspended');
is(run_adm('revoke', $revoked->{serial}), 0, 'setup: a card revoked');

# the active card sends once: seq 0 is spent and has a receipt
{
    my $doc = document(path('.doc'), 1000);
    my $res = post_envelope(seal($active, 'pa-active', $doc));
    is($res->{code}, 201, 'setup: the active card sent once (201)') or diag($res->{body});
}
my $up = up_next($active);
is($up, 1, 'setup: its up_next is 1');
is(sql("SELECT count(*) FROM receipts WHERE serial = x'$active->{serial}'::bigint "
       . "AND seq = 0"), 1, 'setup: a receipt exists for its seq 0');
my $unknown;
do {
    $unknown = sprintf('%016x', (unpack('Q>', random_bytes(8)) >> 1) || 1);
} while (sql("SELECT count(*) FROM cards WHERE serial = x'$unknown'::bigint") != 0);

my @states = (
    [ 'unknown serial', $unknown, 0 ],
    [ 'issued, not activated', $issued->{serial}, 0 ],
    [ 'suspended', $suspended->{serial}, 0 ],
    [ 'revoked', $revoked->{serial}, 0 ],
    [ 'active, seq below up_next (spent, receipt for another envelope)',
      $active->{serial}, $up - 1 ],
    [ 'active, seq = up_next (inside the window)', $active->{serial}, $up ],
    [ 'active, seq = up_next + W - 1 (the window\'s edge)', $active->{serial}, $up + $W - 1 ],
    [ 'active, seq = up_next + W (beyond the window)', $active->{serial}, $up + $W ],
);
my @known = map { $_->{serial} } $issued, $suspended, $revoked, $active;

sub header {
    my ($serial, $seq, $salt) = @_;
    return 'KMDC' . pack('CCn', 1, 1, 0) . pack('H16', $serial) . pack('Q>', $seq) . $salt;
}

# ---- the framings -------------------------------------------------------------

my @framings = (
    [ 'kb_len 0 (then 4 bytes)', sub { pack('N', 0) . 'abcd' }, 400, 'bad_envelope' ],
    [ 'kb_len 58 (then 4 bytes)', sub { pack('N', 58) . 'abcd' }, 400, 'bad_envelope' ],
    [ 'kb_len 16433 (then 4 bytes)', sub { pack('N', 16433) . 'abcd' }, 400, 'bad_envelope' ],
    [ 'kb_len 0xffffffff (then 4 bytes)', sub { pack('N', 0xffffffff) . 'abcd' }, 400,
      'bad_envelope' ],
    [ 'the body ends after the 40-byte header', sub { '' }, 400, 'incomplete' ],
    [ 'the body ends inside the keyblock (kb_len 200, 100 bytes)',
      sub { pack('N', 200) . $_[0] }, 400, 'incomplete', 100 ],
    [ 'a random keyblock of 200 bytes, then the end', sub { pack('N', 200) . $_[0] }, 403,
      'rejected', 200 ],
);

for my $f (@framings) {
    my ($fname, $tail, $want_status, $want_code, $nrandom) = @$f;
    subtest $fname => sub {
        my $salt = random_bytes(16);
        my $rest = $tail->($nrandom ? random_bytes($nrandom) : '');
        my $before = snapshot(@known);
        my (@answers, $first);
        for my $st (@states) {
            my ($sname, $serial, $seq) = @$st;
            my $body = header($serial, $seq, $salt) . $rest;
            my $a = raw_exchange(http_head(length $body) . $body);
            my $j = eval { $json->decode($a->{body}) };
            my $code = ref $j eq 'HASH' ? $j->{error} // '(none)' : '(no JSON)';
            is("$a->{status} $code", "$want_status $want_code", "$sname: $want_status $want_code")
                or diag(answer_text($a));
            push @answers, [ $sname, answer_text($a) ];
        }
        my ($n0, $t0) = @{ $answers[0] };
        for my $x (@answers[1 .. $#answers]) {
            is($x->[1], $t0, "$x->[0]: the answer is byte-identical to the one for an $n0 "
               . '(status line, headers but Date, body)');
        }
        is(snapshot(@known), $before, 'the database is unchanged (card rows, row counts)');
        done_testing();
    };
}

# The runs above changed nothing: the active card still sends at up_next.
{
    my $doc = document(path('.doc'), 10);
    my $res = post_envelope(seal($active, 'pa-active', $doc));
    is($res->{code}, 201, 'afterwards the active card sends its next envelope (201)')
        or diag($res->{body});
    is(up_next($active), $up + 1, 'afterwards its up_next moved by one');
}

done_testing();

sub run_adm {
    my $r = KmdcClient::run({}, KmdcClient::kmdcadm_bin(), @_);
    diag("kmdcadm @_: $r->{out}$r->{err}") if $r->{rc} // 1;
    return $r->{rc} // -1;
}
