# t/001_health.t - GET {location}/health and the dispatcher's 404/405/OPTIONS
# answers, against the Apache::Test server (t/conf/extra.conf.in: <Location
# /kmdc>).
use strict;
use warnings FATAL => 'all';

use Apache::Test qw(-withtestmore);
use Apache::TestRequest qw(GET HEAD POST);
use HTTP::Request ();
use JSON::PP ();

my $json = JSON::PP->new;

# Any method, through Apache::Test's user agent and server address.
sub request {
    my ($method, $path, $content) = @_;
    my $req = HTTP::Request->new($method,
                                 Apache::TestRequest::resolve_url($path));
    if (defined $content) {
        $req->content($content);
        $req->header('Content-Length' => length $content);
    }
    return Apache::TestRequest::user_agent()->request($req);
}

# Decode a JSON body; undef when it is not a JSON object.
sub body_json {
    my ($res) = @_;
    my $v = eval { $json->decode($res->decoded_content // '') };
    return ref $v eq 'HASH' ? $v : undef;
}

# An error answer: status, JSON content type, {"error": code, "message": ...}.
sub is_json_error {
    my ($res, $status, $code, $name) = @_;
    is($res->code, $status, "$name: status $status");
    like($res->header('Content-Type') // '', qr{^application/json\b},
         "$name: Content-Type application/json");
    my $b = body_json($res);
    ok($b && ($b->{error} // '') eq $code && length($b->{message} // ''),
       "$name: body is {\"error\":\"$code\",\"message\":...}")
        or diag('body: ' . ($res->decoded_content // ''));
}

my $serial = '0123456789abcdef';

# --- health ----------------------------------------------------------------
subtest 'health' => sub {
    {
        my $res = GET '/kmdc/health';
        is($res->code, 200, 'health: 200 with the migrated database '
           . '(also: the nested <Location /kmdc/health> does not move the base)')
            or diag($res->as_string);
        like($res->header('Content-Type') // '', qr{^application/json\b},
             'health: Content-Type application/json');
        my $b = body_json($res);
        ok($b && ($b->{status} // '') eq 'ok', 'health: status is "ok"');
        ok($b && defined $b->{schema} && $b->{schema} == 6
           && !ref $b->{schema} && $res->decoded_content =~ /"schema":6\b/,
           'health: schema is the number 6');
        is($res->header('Cache-Control') // '', 'no-store',
           'health: Cache-Control no-store');
    }
    {
        my $res = HEAD '/kmdc/health';
        is($res->code, 200, 'health: HEAD answers 200');
        is(length($res->content // ''), 0, 'health: HEAD has no body');
    }
    {
        my $res = GET '/kmdc/health?probe=1';
        is($res->code, 200, 'health: a query string does not change the path');
    }
};

# --- 404 -------------------------------------------------------------------
is_json_error(GET('/kmdc/nope'), 404, 'not_found', 'unknown path');
is_json_error(GET('/kmdc/health/extra'), 404, 'not_found',
              'health with an extra segment');
is_json_error(GET('/kmdc/health/'), 404, 'not_found',
              'health with a trailing slash');
is_json_error(GET('/kmdc/nothing-here'), 404, 'not_found', 'an unknown first segment');
is_json_error(GET('/kmdc/mailbox/zz'), 404, 'not_found',
              'mailbox with a serial that is not 16 hex digits');
is(GET('/kmdc/mailbox/0123456789ABCDEF')->code, 404,
   'mailbox with an uppercase serial: 404 (hex is lowercase)');
is(GET('/kmdc/mailbox/0000000000000000')->code, 404,
   'mailbox with serial 0: 404 (serials start at 1)');
is(GET("/kmdc/mailbox/$serial/1/2")->code, 404,
   'mailbox with too many segments: 404');

{
    my $b = body_json(GET('/kmdc/mailbox/XYZ'));
    is($b && $b->{message}, 'no such card: a serial is 16 lowercase hex digits',
       'a malformed serial: the message names the rule');
}
{
    # httpd decodes %XX into r->uri before the handler routes it
    my $b = body_json(GET('/kmdc/mail%62ox/zz'));
    is($b && $b->{message}, 'no such card: a serial is 16 lowercase hex digits',
       'a percent-encoded name is routed decoded');
}
is(request(DELETE => '/kmdc/mailbox/XYZ/0000000000000001')->code, 404,
   'DELETE with a malformed serial: 404');
# a malformed id is answered after request authentication, a serial before it
is(GET('/kmdc/messages/notanid')->code, 401,
   'a malformed message id, unsigned: 401 (authentication first)');
is(GET("/kmdc/mailbox/$serial/notanid")->code, 401,
   'a malformed delivery id, unsigned: 401 (authentication first)');

# --- 405 -------------------------------------------------------------------
subtest '405' => sub {
    {
        my $res = POST '/kmdc/health', content => '';
        is_json_error($res, 405, 'method_not_allowed', 'POST /health');
        is($res->header('Allow') // '', 'GET, HEAD', 'POST /health: Allow: GET, HEAD');
    }
    {
        my $res = request(DELETE => '/kmdc/send');
        is_json_error($res, 405, 'method_not_allowed', 'DELETE /send');
        is($res->header('Allow') // '', 'POST', 'DELETE /send: Allow: POST');
    }
    {
        my $res = request(PUT => "/kmdc/mailbox/$serial/1", 'x');
        is_json_error($res, 405, 'method_not_allowed', 'PUT /mailbox/S/ID');
        is($res->header('Allow') // '', 'GET, HEAD, DELETE',
           'PUT /mailbox/S/ID: Allow lists GET, HEAD, DELETE');
    }
    {
        my $res = GET "/kmdc/activate/$serial";
        is($res->code, 405, 'GET /activate/S: 405');
        is($res->header('Allow') // '', 'POST', 'GET /activate/S: Allow: POST');
    }
    {
        # the method is checked before the serial
        my $res = POST '/kmdc/mailbox/XYZ', content => '';
        is($res->code, 405, 'POST /mailbox/XYZ: 405 (the method before the serial)');
    }
};

# --- OPTIONS ---------------------------------------------------------------
subtest 'OPTIONS' => sub {
    {
        my $res = request(OPTIONS => "/kmdc/mailbox/$serial/0000000000000001");
        is($res->code, 204, 'OPTIONS /mailbox/S/ID: 204');
        is($res->header('Allow') // '', 'GET, HEAD, DELETE',
           'OPTIONS /mailbox/S/ID: Allow: GET, HEAD, DELETE');
        is(length($res->content // ''), 0, 'OPTIONS /mailbox/S/ID: no body');
    }
    {
        my $res = request(OPTIONS => '/kmdc');
        ok($res->code == 204 && ($res->header('Allow') // '') eq 'GET, HEAD',
           'OPTIONS on the page: 204, Allow: GET, HEAD');
    }
};
is_json_error(request(OPTIONS => '/kmdc/nope'), 404, 'not_found', 'OPTIONS on an unknown path');

done_testing();
