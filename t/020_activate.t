# t/020_activate.t - POST /activate/{serial} and GET /card/{serial} (docs/PROTOCOL.md
# sections 2 and 7, docs/API.md) against the real server and database: the strict form, wrong and
# expired codes counted in the database, the lock after five failures, the
# key rotation (the pre-activation key stops working, the rotated one works,
# the stored keys changed), 409 for an active card, the card JSON.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use KmdcTest qw(:all);

sub is_error {
    my ($res, $status, $code, $name) = @_;
    my $b = body_json($res);
    ok($res->code == $status && $b && ($b->{error} // '') eq $code
       && length($b->{message} // ''), "$name: $status $code")
        or diag($res->code . ' ' . ($res->content // ''));
}

sub row {
    my ($card, $cols) = @_;
    return sql("SELECT $cols FROM cards WHERE serial = x'$card->{serial}'::bigint");
}

sub post_activate {
    my ($card, $body) = @_;
    return signed($card, 'POST', "/kmdc/activate/$card->{serial}", body => $body);
}

# A wrong code that is still a valid Crockford code.
sub wrong_code {
    my ($code) = @_;
    my $w = $code;
    substr($w, 0, 1) = substr($code, 0, 1) eq '7' ? '8' : '7';
    return $w;
}

# --- GET /card of an issued card ------------------------------------------------------
my $eve = issue_card('ac-eve');
{
    my $t0 = time * 1000;
    my $res = signed($eve, 'GET', "/kmdc/card/$eve->{serial}");
    is($res->code, 200, 'card: GET /card of an issued card answers 200') or diag($res->as_string);
    like($res->header('Content-Type') // '', qr{^application/json\b}, 'card: JSON');
    is($res->header('Cache-Control') // '', 'no-store', 'card: Cache-Control no-store');
    my $b = body_json($res) // {};
    is_deeply([sort keys %$b], [qw(down_next locked serial status time up_next)],
              'card: exactly the fields of docs/API.md');
    is($b->{serial}, $eve->{serial}, 'card: serial as 16 hex digits');
    is($b->{status}, 'issued', 'card: status issued');
    ok(JSON::PP::is_bool($b->{locked}) && !$b->{locked}, 'card: locked is the JSON false');
    ok($res->content =~ /"up_next":0\b/ && $res->content =~ /"down_next":0\b/,
       'card: up_next and down_next are the numbers 0');
    ok(abs($b->{time} - $t0) < 60_000, 'card: time is the server clock in Unix ms');
}

# --- the strict form --------------------------------------------------------------------------
{
    my $r = 'ab' x 32;
    my $c = $eve->{code};
    my %bad = (
        'an empty body' => '',
        'no r' => "code=$c",
        'no code' => "r=$r",
        'r of 62 hex digits' => "code=$c&r=" . ('ab' x 31),
        'r in uppercase hex' => "code=$c&r=" . ('AB' x 32),
        'r with a non-hex digit' => "code=$c&r=" . ('ab' x 31) . 'ag',
        'an extra field' => "code=$c&r=$r&x=1",
        'code given twice' => "code=$c&code=$c&r=$r",
        'a trailing &' => "code=$c&r=$r&",
        'a leading &' => "&code=$c&r=$r",
        'a field without =' => "code=$c&r",
        'a broken %-escape' => "code=$c%2&r=$r",
        'a field name in another case' => "Code=$c&r=$r",
        'JSON instead of a form' => qq({"code":"$c","r":"$r"}),
    );
    for my $name (sort keys %bad) {
        is_error(post_activate($eve, $bad{$name}), 400, 'bad_request', "form: $name");
    }
    is(row($eve, 'activation_failures'), 0, 'form: malformed bodies are not counted as attempts');
    is(row($eve, 'status'), 'issued', 'form: the card is still issued');
}

# --- wrong codes and the lock ----------------------------------------------------------------
my $mallory = issue_card('ac-mallory');
{
    my $bad = wrong_code($mallory->{code});
    is_error(post_activate($mallory, form_body($bad, random_bytes(32))), 403, 'activation_failed',
             'wrong code: 403');
    is(row($mallory, 'activation_failures || \'|\' || locked'), '1|false',
       'wrong code: the failure is counted in the database (committed)');
    is(sql("SELECT count(*) FROM audit_log WHERE serial = x'$mallory->{serial}'::bigint "
           . "AND event = 'card.activation_failed'"), 1, 'wrong code: one audit row');
    is_error(post_activate($mallory, form_body('U' x 10, random_bytes(32))), 403,
             'activation_failed', 'a code that is not Crockford base32: 403 (counted)');
    for my $i (3 .. 4) {
        is_error(post_activate($mallory, form_body($bad, random_bytes(32))), 403,
                 'activation_failed', "wrong code, attempt $i");
    }
    is(row($mallory, 'activation_failures || \'|\' || locked'), '4|false',
       'four failures: counted, not locked yet');
    is_error(post_activate($mallory, form_body($bad, random_bytes(32))), 403, 'locked',
             'the fifth wrong code locks the card');
    is(row($mallory, 'activation_failures || \'|\' || locked || \'|\' || status'), '5|true|issued',
       'five failures: locked in the database, still issued');
    is_error(post_activate($mallory, form_body($mallory->{code}, random_bytes(32))), 403,
             'locked', 'a locked card refuses even the right code');
    is(row($mallory, 'activation_failures || \'|\' || status'), '5|issued',
       'the right code on a locked card changes nothing');
    my $b = body_json(signed($mallory, 'GET', "/kmdc/card/$mallory->{serial}")) // {};
    ok(($b->{status} // '') eq 'issued' && JSON::PP::is_bool($b->{locked}) && $b->{locked},
       'GET /card shows "locked":true');
    is(signed($mallory, 'GET', "/kmdc/mailbox/$mallory->{serial}")->code, 403,
       'the locked card is refused on /mailbox');
}

# --- an expired code --------------------------------------------------------------------------
my $old = issue_card('ac-old');
{
    sql("UPDATE cards SET access_expires = now() - interval '1 second' "
        . "WHERE serial = x'$old->{serial}'::bigint");
    is_error(post_activate($old, form_body($old->{code}, random_bytes(32))), 403,
             'activation_failed', 'an expired code, even the right one');
    is(row($old, 'activation_failures || \'|\' || status'), '1|issued',
       'the expired attempt counts; the card stays issued');
}

# --- the right code -----------------------------------------------------------------------------
subtest 'the right code' => sub {
    {
        my $before = row($eve, "encode(up_chain, 'hex') || encode(down_chain, 'hex') || encode(auth_key, 'hex')");
        # wrong once first: the counter is reset by a success
        is_error(post_activate($eve, form_body(wrong_code($eve->{code}), random_bytes(32))), 403,
                 'activation_failed', 'eve: one wrong code first');
        my $issued_ak = $eve->{ak};
        my $r = random_bytes(32);
        # the code as a person might type it: lower case, '+' for a space, %2D
        my $typed = lc($eve->{code}) =~ s/-/%2D/r;
        $typed = substr($typed, 0, 3) . '+' . substr($typed, 3);
        my $res = activate($eve, r => $r, body => "r=" . unpack('H*', $r) . "&code=$typed");
        is($res->code, 204, 'the right code (typed loosely, fields in the other order): 204')
            or diag($res->as_string);
        is(length($res->content // ''), 0, '204 has no body');
        is(row($eve, "status || '|' || (activated_at IS NOT NULL) || '|' || (access_mac IS NULL) "
               . "|| '|' || activation_failures || '|' || locked || '|' || key_id"),
           'active|true|true|0|false|1', 'the row: active, activated_at set, code gone, failures reset');
        my $after = row($eve, "encode(up_chain, 'hex') || encode(down_chain, 'hex') || encode(auth_key, 'hex')");
        ok($after ne $before && substr($after, 0, 152) ne substr($before, 0, 152)
           && substr($after, 152, 152) ne substr($before, 152, 152)
           && substr($after, 304) ne substr($before, 304),
           'the three stored keys were rewrapped');
        is(row($eve, 'up_next || \'|\' || down_next'), '0|0', 'the counters did not move');
        is(sql("SELECT count(*) FROM audit_log WHERE serial = x'$eve->{serial}'::bigint "
               . "AND event = 'card.activated' AND detail::text NOT LIKE '%ac-eve%'"), 1,
           'one card.activated audit row, without the address');

        my $old_res = signed($eve, 'GET', "/kmdc/card/$eve->{serial}", ak => $issued_ak);
        is($old_res->code, 401, 'a request signed with the pre-activation key now fails 401');
        my $new_res = signed($eve, 'GET', "/kmdc/card/$eve->{serial}");
        my $b = body_json($new_res) // {};
        ok($new_res->code == 200 && ($b->{status} // '') eq 'active' && !$b->{locked},
           'a request signed with the rotated key: 200, status active');
        is(signed($eve, 'GET', "/kmdc/mailbox/$eve->{serial}")->code, 200,
           'the active card may read its mailbox');

        is_error(post_activate($eve, form_body($eve->{code}, $r)), 409, 'already_active',
                 'activating an active card again (same r, rotated key)');
        is(signed($eve, 'POST', "/kmdc/activate/$eve->{serial}",
                  body => form_body($eve->{code}, $r), ak => $issued_ak)->code, 401,
           'a lost-answer retry signed with the old key: 401 (the client then probes GET /card)');
        is(row($eve, 'activation_failures'), 0, '409 counts no failure');
    }
};

# --- rotation against the client's formula -------------------------------------------------------
# The server's auth key must be exactly HKDF(r, AK, "KMDC/1 activate auth_key"):
# a key rotated with any other info or salt is refused.
my $zed = issue_card('ac-zed');
{
    my $r = random_bytes(32);
    my $issued = { %$zed };
    is(activate($zed, r => $r)->code, 204, 'zed: activated');
    my $wrong_info = hkdf($r, $issued->{ak}, 'KMDC/1 activate up_chain', 32);
    my $wrong_salt = hkdf('', $issued->{ak}, 'KMDC/1 activate auth_key', 32);
    is(signed($zed, 'GET', "/kmdc/card/$zed->{serial}", ak => $wrong_info)->code, 401,
       'zed: a key rotated with the wrong name is refused');
    is(signed($zed, 'GET', "/kmdc/card/$zed->{serial}", ak => $wrong_salt)->code, 401,
       'zed: a key rotated without r is refused');
    is(signed($zed, 'GET', "/kmdc/card/$zed->{serial}")->code, 200,
       'zed: HKDF(r, AK, "KMDC/1 activate auth_key", 32) is accepted');
}

# --- a suspended issued card and an unknown path -----------------------------------------------------
my $sus = issue_card('ac-sus');
{
    sql("UPDATE cards SET status = 'suspended' WHERE serial = x'$sus->{serial}'::bigint");
    is_error(post_activate($sus, form_body($sus->{code}, random_bytes(32))), 403, 'forbidden',
             'a suspended card cannot be activated');
    is(row($sus, 'activation_failures || \'|\' || status'), '0|suspended',
       'the suspended card is unchanged');
}
is(request('POST', '/kmdc/activate/zz', body => 'x')->code, 404,
   'POST /activate with a malformed serial: 404');

done_testing();
