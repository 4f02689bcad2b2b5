# t/010_reqauth.t - request authentication (docs/PROTOCOL.md section 5) against the real
# server and database: missing, malformed, wrong, stale and replayed
# Authorization headers answer 401 with WWW-Authenticate; a good signature
# for a card that may not do this answers 403; bodies are bounded; nonces are
# recorded even when the request then fails.  An unknown serial, a bad
# signature and a stale timestamp answer alike whether the card exists or not.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use KmdcTest qw(:all);

my $alice = issue_card('ra-alice');
my $bob = issue_card('ra-bob');
my $carol = issue_card('ra-carol');     # stays issued
my $sus = issue_card('ra-sus');         # activated, then suspended
my $rev = issue_card('ra-rev');         # activated, then revoked
for my $c ($alice, $bob, $sus, $rev) {
    my $res = activate($c);
    die "activation of $c->{address} failed: " . $res->as_string unless $res->code == 204;
}
sql("UPDATE cards SET status = 'suspended' WHERE serial = x'$sus->{serial}'::bigint");
sql("UPDATE cards SET status = 'revoked' WHERE serial = x'$rev->{serial}'::bigint");

my $card_a = "/kmdc/card/$alice->{serial}";
my $mbox_a = "/kmdc/mailbox/$alice->{serial}";

# 401 with the challenge and the JSON error.
sub is_401 {
    my ($res, $name) = @_;
    is($res->code, 401, "$name: 401") or diag($res->as_string);
    is($res->header('WWW-Authenticate') // '', 'KMDC1-HMAC-SHA256',
       "$name: WWW-Authenticate: KMDC1-HMAC-SHA256");
    my $b = body_json($res);
    ok($b && ($b->{error} // '') eq 'unauthorized' && length($b->{message} // ''),
       "$name: {\"error\":\"unauthorized\"}");
}

sub is_error {
    my ($res, $status, $code, $name) = @_;
    my $b = body_json($res);
    ok($res->code == $status && $b && ($b->{error} // '') eq $code,
       "$name: $status $code")
        or diag($res->code . ' ' . ($res->content // ''));
}

# The headers the server sent, as text, without Date (and without LWP's own
# Client-* lines, which the server never sends).
sub server_headers {
    my ($res) = @_;
    my $h = $res->headers->clone;
    $h->remove_header('Date');
    $h->remove_header($_) for grep { /^Client-/i } $h->header_field_names;
    return $h->as_string;
}

sub nonces { return sql("SELECT count(*) FROM request_nonces WHERE serial = x'$_[0]'::bigint") }

# --- a good request ---------------------------------------------------------------
subtest 'a good request' => sub {
    {
        my $res = signed($alice, 'GET', $card_a);
        is($res->code, 200, 'a correctly signed GET /card answers 200') or diag($res->as_string);
        my $res2 = signed($alice, 'GET', $mbox_a);
        is($res2->code, 200, 'a correctly signed GET /mailbox answers 200');
        my $res3 = signed($alice, 'HEAD', $card_a);
        is($res3->code, 200, 'HEAD is signed as HEAD and answers 200');
        my $res4 = signed($alice, 'GET', "$card_a?x=1");
        is($res4->code, 200, 'the query is part of the signed target');
    }
};

# --- missing and malformed headers -------------------------------------------------------
is_401(request('GET', $card_a), 'no Authorization');
{
    my $good = sign_header($alice, 'GET', $card_a, '');
    my %bad = (
        'another scheme' => ($good =~ s/^KMDC1-HMAC-SHA256/Bearer/r),
        'two spaces after the scheme' => ($good =~ s/ /  /r),
        'uppercase hex signature' => ($good =~ s/sig=([0-9a-f]+)/'sig=' . uc $1/er),
        'no sig parameter' => ($good =~ s/,sig=[0-9a-f]+//r),
        'parameters out of order' => do {
            my ($s, $t, $n, $g) = $good =~ /serial=(\w+),ts=(\d+),nonce=(\w+),sig=(\w+)/;
            "KMDC1-HMAC-SHA256 ts=$t,serial=$s,nonce=$n,sig=$g";
        },
        'ts with a leading zero' => ($good =~ s/ts=/ts=0/r),
        'short nonce' => ($good =~ s/nonce=[0-9a-f]{2}/nonce=/r),
        'serial 0' => ($good =~ s/serial=[0-9a-f]+/serial=0000000000000000/r),
    );
    for my $name (sort keys %bad) {
        my $res = request('GET', $card_a, auth => $bad{$name});
        ok($res->code == 401
           && ($res->header('WWW-Authenticate') // '') eq 'KMDC1-HMAC-SHA256',
           "malformed header ($name): 401 with WWW-Authenticate")
            or diag($res->as_string);
    }
}

# --- signatures that do not verify ------------------------------------------------------------
is_401(signed($alice, 'GET', $card_a, ak => $bob->{ak}), 'signed with another card\'s key');
is_401(signed($alice, 'GET', $card_a, ak => $alice->{old_ak}),
       'signed with the key from before activation');
is_401(request('GET', $card_a, auth => sign_header($alice, 'GET', "$card_a?x=1", '')),
       'signature over another target (query)');
is_401(request('GET', $card_a, auth => sign_header($alice, 'DELETE', $card_a, '')),
       'signature over another method');
is_401(request('GET', "/kmdc/card/$alice->{serial}",
               auth => sign_header($alice, 'GET', "/card/$alice->{serial}", '')),
       'signature over the target without the location prefix');
{
    my $body = form_body('AAAAA-AAAAA', "\x11" x 32);
    is_401(request('POST', "/kmdc/activate/$carol->{serial}", body => $body,
                   auth => sign_header($carol, 'POST', "/kmdc/activate/$carol->{serial}",
                                       $body . 'x')),
           'signature over another body');
    is(sql("SELECT activation_failures FROM cards WHERE serial = x'$carol->{serial}'::bigint"),
       0, 'a refused signature reaches no endpoint (no activation attempt counted)');
}
is_401(signed($alice, 'GET', $card_a, serial => '7fffffffffff0001', ak => $alice->{ak}),
       'an unknown serial');

# --- a 401 does not tell whether the card exists -------------------------------------------
subtest 'a 401 does not tell whether the card exists' => sub {
    {
        my $unknown = '7fffffffffff0002';
        my $u = signed($alice, 'GET', $card_a, serial => $unknown);
        my $b = signed($alice, 'GET', $card_a, ak => $bob->{ak});
        is_401($u, 'unknown serial vs bad signature: the unknown serial');
        is_401($b, 'unknown serial vs bad signature: the bad signature of a known card');
        is($u->content, $b->content,
           'an unknown serial and a bad signature get byte-identical 401 bodies')
            or diag("unknown serial: " . $u->content . "\nbad signature: " . $b->content);
        is(server_headers($u), server_headers($b),
           'an unknown serial and a bad signature get the same headers (but Date)')
            or diag("unknown serial:\n" . server_headers($u) . "bad signature:\n" . server_headers($b));

        # the clock is checked whatever the card: the same 401 with a good
        # signature, a bad one and an unknown serial
        my $ts = time - 310;
        my @stale = (signed($alice, 'GET', $card_a, ts => $ts),
                     signed($alice, 'GET', $card_a, ts => $ts, ak => $bob->{ak}),
                     signed($alice, 'GET', $card_a, ts => $ts, serial => $unknown));
        ok(!grep({ $_->code != 401 || (body_json($_) // {})->{message} !~ /^the request's time is more than/ }
                 @stale), 'a stale ts: 401 with the clock message, signed well, badly or by nobody')
            or diag(join("\n", map { $_->code . ' ' . $_->content } @stale));
        is($stale[1]->content, $stale[0]->content, 'a stale ts: a bad signature gets the same body');
        is($stale[2]->content, $stale[0]->content, 'a stale ts: an unknown serial gets the same body');
    }
};

# --- the clock ----------------------------------------------------------------------------
is_401(signed($alice, 'GET', $card_a, ts => time - 310), 'ts 310 s in the past (stale)');
is_401(signed($alice, 'GET', $card_a, ts => time + 310), 'ts 310 s in the future');
is(signed($alice, 'GET', $card_a, ts => time - 250)->code, 200, 'ts 250 s in the past is accepted');
is(signed($alice, 'GET', $card_a, ts => time + 250)->code, 200, 'ts 250 s in the future is accepted');

# --- replays -----------------------------------------------------------------------------
subtest 'replays' => sub {
    {
        my $before = nonces($alice->{serial});
        my $auth = sign_header($alice, 'GET', $card_a, '');
        is(request('GET', $card_a, auth => $auth)->code, 200, 'replay: the first use answers 200');
        is(nonces($alice->{serial}), $before + 1, 'replay: the nonce is recorded in request_nonces');
        is_401(request('GET', $card_a, auth => $auth), 'replay: the same header again');
        my $nonce = nonce_hex();
        is(signed($alice, 'GET', $card_a, nonce => $nonce)->code, 200,
           'replay: a chosen nonce is accepted once');
        is_401(signed($alice, 'GET', $mbox_a, nonce => $nonce),
               'replay: the same nonce in another request (freshly signed)');
        is(signed($bob, 'GET', "/kmdc/card/$bob->{serial}", nonce => $nonce)->code, 200,
           'replay: nonces are per card (another card may use the same nonce)');

        # a request that fails after authentication keeps its nonce
        my $auth2 = sign_header($alice, 'GET', "/kmdc/mailbox/$bob->{serial}", '');
        is_error(request('GET', "/kmdc/mailbox/$bob->{serial}", auth => $auth2), 403, 'forbidden',
                 'replay: a request for another mailbox');
        is_401(request('GET', "/kmdc/mailbox/$bob->{serial}", auth => $auth2),
               'replay: the refused request\'s nonce was kept');
        my $auth3 = sign_header($alice, 'GET', '/kmdc/mailbox/' . $alice->{serial} . '/00000000000000ff', '');
        is(request('GET', '/kmdc/mailbox/' . $alice->{serial} . '/00000000000000ff', auth => $auth3)->code,
           404, 'replay: a fetch of an unknown delivery answers 404');
        is(request('GET', '/kmdc/mailbox/' . $alice->{serial} . '/00000000000000ff', auth => $auth3)->code,
           401, 'replay: and its nonce is kept too');
        # a request refused for its signature leaves no nonce behind
        my $n2 = nonce_hex();
        is(signed($alice, 'GET', $card_a, nonce => $n2, ak => $bob->{ak})->code, 401,
           'a bad signature with a fresh nonce: 401');
        is(sql("SELECT count(*) FROM request_nonces WHERE nonce = '\\x$n2'::bytea"), 0,
           'a bad signature records no nonce (nobody can burn nonces for a card)');
        is(signed($alice, 'GET', $card_a, nonce => $n2)->code, 200,
           'the nonce of a badly signed request stays usable');
    }
};

# --- bodies ------------------------------------------------------------------------------
{
    my $res = signed($alice, 'GET', $card_a, body => 'x');
    is_error($res, 400, 'bad_request', 'a GET with a body');
    $res = signed($alice, 'DELETE', "$mbox_a/00000000000000ff", body => 'x');
    is_error($res, 400, 'bad_request', 'a DELETE with a body');
    $res = signed($carol, 'POST', "/kmdc/activate/$carol->{serial}", body => 'x' x 4097);
    is_error($res, 400, 'bad_request', 'an authenticated body of 4097 bytes');
    my $body = 'code=x&r=' . ('0' x 64);
    $body .= '&' x (4096 - length $body);
    $res = signed($carol, 'POST', "/kmdc/activate/$carol->{serial}", body => $body);
    my $b = body_json($res);
    ok($res->code == 400 && $b && $b->{message} =~ /form/,
       'an authenticated body of 4096 bytes is read (then refused as a bad form)')
        or diag($res->as_string);
}

# --- who may do what -----------------------------------------------------------------------
is_error(signed($alice, 'GET', "/kmdc/mailbox/$bob->{serial}"), 403, 'forbidden',
         'alice reading bob\'s mailbox');
is_error(signed($alice, 'GET', "/kmdc/card/$bob->{serial}"), 403, 'forbidden',
         'alice reading bob\'s card');
is_error(signed($alice, 'DELETE', "/kmdc/mailbox/$bob->{serial}/0000000000000001"), 403,
         'forbidden', 'alice acknowledging in bob\'s mailbox');
is_error(signed($alice, 'POST', "/kmdc/activate/$carol->{serial}",
                body => form_body($carol->{code}, "\x22" x 32)),
         403, 'forbidden', 'alice activating carol\'s card');
is(sql("SELECT status FROM cards WHERE serial = x'$carol->{serial}'::bigint"), 'issued',
   'carol is still issued');

# an issued card: only /activate and /card
is_error(signed($carol, 'GET', "/kmdc/mailbox/$carol->{serial}"), 403, 'forbidden',
         'an issued card on GET /mailbox');
is_error(signed($carol, 'GET', "/kmdc/mailbox/$carol->{serial}/0000000000000001"), 403,
         'forbidden', 'an issued card fetching a delivery');
is_error(signed($carol, 'DELETE', "/kmdc/mailbox/$carol->{serial}/0000000000000001"), 403,
         'forbidden', 'an issued card acknowledging');
is_error(signed($carol, 'GET', '/kmdc/messages/0000000000000001'), 403, 'forbidden',
         'an issued card on GET /messages');
{
    my $res = signed($carol, 'GET', "/kmdc/card/$carol->{serial}");
    my $b = body_json($res);
    ok($res->code == 200 && $b && $b->{status} eq 'issued', 'an issued card may read GET /card');
}

# suspended and revoked: only GET /card
for my $c ([$sus, 'suspended'], [$rev, 'revoked']) {
    my ($card, $st) = @$c;
    is_error(signed($card, 'GET', "/kmdc/mailbox/$card->{serial}"), 403, 'forbidden',
             "a $st card on GET /mailbox");
    is_error(signed($card, 'DELETE', "/kmdc/mailbox/$card->{serial}/0000000000000001"), 403,
             'forbidden', "a $st card acknowledging");
    is_error(signed($card, 'GET', '/kmdc/messages/0000000000000001'), 403, 'forbidden',
             "a $st card on GET /messages");
    is_error(signed($card, 'POST', "/kmdc/activate/$card->{serial}",
                    body => form_body('AAAAA-AAAAA', "\x33" x 32)),
             403, 'forbidden', "a $st card on POST /activate");
    my $res = signed($card, 'GET', "/kmdc/card/$card->{serial}");
    my $b = body_json($res);
    ok($res->code == 200 && $b && $b->{status} eq $st,
       "a $st card may still read its status on GET /card")
        or diag($res->as_string);
}

# the dispatcher's checks come first: a bad path serial is 404, not 401
is(request('GET', '/kmdc/card/zz')->code, 404, 'an unsigned request for a malformed serial: 404');
is(request('POST', "/kmdc/card/$alice->{serial}")->code, 405,
   'an unsigned request with the wrong method: 405');

done_testing();
