# t/lib/KmdcTest.pm - shared helpers of the endpoint tests (t/010-030):
# issuing cards with the built kmdcadm, reading a plain card file's keys,
# signing requests (docs/PROTOCOL.md section 5) in Perl, activation's key rotation;
# run, sql, workdir and random_bytes are KmdcUtil's, re-exported.
#
# Needs the environment of t/run-suite (KMDC_BUILD, KMDC_MASTER_KEY_FILE,
# PGHOST/PGPORT/PGDATABASE/PGUSER).  Keys are raw byte strings.
package KmdcTest;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use Digest::SHA qw(hmac_sha256 hmac_sha256_hex sha256_hex);
use HTTP::Request ();
use JSON::PP ();
use Apache::TestRequest ();

use KmdcUtil qw(run sql workdir random_bytes kmdcadm_issue spew);

our @EXPORT_OK = qw(run sql workdir issue_card read_card hkdf rotate sign_header
                    request signed body_json random_bytes nonce_hex activate
                    form_body post_envelope kmdc_cards kmdc_seal delivery_ids
                    upload_rows);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

my $json = JSON::PP->new;

sub nonce_hex { return unpack('H*', random_bytes(16)) }

# HKDF-SHA-256 (RFC 5869); an empty salt is 32 zero bytes.
sub hkdf {
    my ($salt, $ikm, $info, $len) = @_;
    $salt = "\0" x 32 unless length $salt;
    my $prk = hmac_sha256($ikm, $salt);
    my ($t, $okm) = ('', '');
    for (my $i = 1; length $okm < $len; $i++) {
        $t = hmac_sha256($t . $info . chr($i), $prk);
        $okm .= $t;
    }
    return substr($okm, 0, $len);
}

# The activation rotation of one key (docs/PROTOCOL.md section 2).
sub rotate {
    my ($r, $k, $name) = @_;
    return hkdf($r, $k, "KMDC/1 activate $name", 32);
}

# Read a plain (unprotected) card file: {serial, state, address, url, uck,
# up_next, dck, down_next, ak} (docs/PROTOCOL.md 9).
sub read_card {
    my ($file) = @_;
    open my $fh, '<:raw', $file or die "$file: $!";
    local $/;
    my $b = <$fh>;
    close $fh;
    die "$file: not a card" unless substr($b, 0, 8) eq 'KMDCCARD';
    die "$file: protected card" unless ord(substr($b, 9, 1)) == 0;
    my $body = substr($b, 48, length($b) - 80);
    my %c;
    my $p = 0;
    my $take = sub { my $s = substr($body, $p, $_[0]); $p += $_[0]; $s };
    $c{serial} = unpack('H*', $take->(8));
    $c{state} = ord($take->(1));
    $c{flags} = ord($take->(1));
    $c{address} = $take->(unpack('n', $take->(2)));
    $c{url} = $take->(unpack('n', $take->(2)));
    $c{uck} = $take->(32);
    $c{up_next} = unpack('Q>', $take->(8));
    $c{dck} = $take->(32);
    $c{down_next} = unpack('Q>', $take->(8));
    $c{ak} = $take->(32);
    return \%c;
}

# Issue a card with the built kmdcadm: {serial, code, file, address, ak,
# uck, dck} (the issued keys, from the card file).
sub issue_card {
    my ($addr) = @_;
    my $url = Apache::TestRequest::resolve_url('/kmdc');
    $url =~ s{/+$}{};
    my $i = kmdcadm_issue(address => $addr, url => $url, file => workdir() . "/$addr.card");
    my $c = read_card($i->{file});
    die "card file serial differs" unless $c->{serial} eq $i->{serial};
    return { %$c, code => $i->{code}, file => $i->{file}, address => $addr };
}

# The Authorization header value for a request (docs/PROTOCOL.md section 5).  %o: ts, nonce
# (32 hex), serial (to claim another), ak (another key).
sub sign_header {
    my ($card, $method, $target, $body, %o) = @_;
    my $ts = $o{ts} // time;
    my $nonce = $o{nonce} // nonce_hex();
    my $serial = $o{serial} // $card->{serial};
    my $ak = $o{ak} // $card->{ak};
    my $msg = join("\n", 'KMDC/1 request', $method, $target, $ts, $nonce,
                   sha256_hex($body // ''));
    my $sig = hmac_sha256_hex($msg, $ak);
    return "KMDC1-HMAC-SHA256 serial=$serial,ts=$ts,nonce=$nonce,sig=$sig";
}

# Send a request through Apache::Test's server.  %o: body, auth (the
# Authorization value, undef for none), headers (hash ref).
sub request {
    my ($method, $target, %o) = @_;
    my $base = Apache::TestRequest::resolve_url('/');
    $base =~ s{/+$}{};
    my $req = HTTP::Request->new($method, $base . $target);
    if (defined $o{body}) {
        $req->content($o{body});
        $req->header('Content-Length' => length $o{body});
        $req->header('Content-Type' => $o{type} // 'application/x-www-form-urlencoded');
    }
    $req->header(Authorization => $o{auth}) if defined $o{auth};
    for my $h (keys %{ $o{headers} // {} }) {
        $req->header($h => $o{headers}{$h});
    }
    my $ua = Apache::TestRequest::user_agent();
    return $ua->request($req);
}

# A request signed by card (target is the raw path + query, e.g.
# "/kmdc/card/SERIAL").  %o as for request and sign_header.
sub signed {
    my ($card, $method, $target, %o) = @_;
    my $auth = sign_header($card, $method, $target, $o{body}, %o);
    return request($method, $target, %o, auth => $auth);
}

# The form body of POST /activate.
sub form_body {
    my ($code, $r) = @_;
    return 'code=' . $code . '&r=' . unpack('H*', $r);
}

# Activate card in Perl (signed with its issued AK); on 204 the hash holds
# the rotated keys and state 2.  Returns the response.
sub activate {
    my ($card, %o) = @_;
    my $r = $o{r} // random_bytes(32);
    my $res = signed($card, 'POST', "/kmdc/activate/$card->{serial}",
                     body => $o{body} // form_body($o{code} // $card->{code}, $r));
    if ($res->code == 204) {
        $card->{old_ak} = $card->{ak};
        $card->{uck} = rotate($r, $card->{uck}, 'up_chain');
        $card->{dck} = rotate($r, $card->{dck}, 'down_chain');
        $card->{ak} = rotate($r, $card->{ak}, 'auth_key');
        $card->{state} = 2;
    }
    return $res;
}

# The JSON object of a response, or undef.
sub body_json {
    my ($res) = @_;
    my $v = eval { $json->decode($res->content // '') };
    return ref $v eq 'HASH' ? $v : undef;
}

# Issue a card for each address with kmdcadm and activate it with the real
# client ($kmdc, the built kmdc binary); address => card (issue_card's hash).
sub kmdc_cards {
    my ($kmdc, @addrs) = @_;
    my %card;
    for my $who (@addrs) {
        my $c = issue_card($who);
        my ($rc, $out) = run($kmdc, '--card', $c->{file}, 'activate', $c->{code});
        die "kmdc activate failed ($rc): $out" if $rc;
        $card{$who} = $c;
    }
    return %card;
}

# Seal $size random bytes from $card to the addresses $to (comma-separated)
# with the real client; the files go under workdir() as doc$tag and
# env$tag.kmdc.  Returns (envelope file, document file).
sub kmdc_seal {
    my ($kmdc, $card, $to, $size, $tag) = @_;
    my $dir = workdir();
    my $doc = spew("$dir/doc$tag", random_bytes($size));
    my $env = "$dir/env$tag.kmdc";
    my ($rc, $out) = run($kmdc, '--card', $card->{file}, 'seal', '--to', $to, '-o', $env, $doc);
    die "kmdc seal failed ($rc): $out" if $rc;
    return ($env, $doc);
}

# The ids of the deliveries queued in the mailbox of $card (activated in
# Perl, so that its request can be signed), oldest first, as GET /mailbox
# lists them; () when the listing fails.
sub delivery_ids {
    my ($card) = @_;
    my $list = signed($card, 'GET', "/kmdc/mailbox/$card->{serial}");
    return map { $_->{id} } @{ (body_json($list) // {})->{deliveries} // [] };
}

# "U C": the rows of uploads and of upload_chunks in the suite's database.
sub upload_rows {
    return sql('SELECT (SELECT count(*) FROM uploads) || \' \' || '
               . '(SELECT count(*) FROM upload_chunks)');
}

# POST the envelope file $env to $url/send as curl sends a raw envelope; its
# HTTP status code as a string, or "curl N: <curl's message>" when curl failed.
sub post_envelope {
    my ($url, $env) = @_;
    my ($rc, $out) = run('curl', '-sS', '-o', '/dev/null', '-w', '%{http_code}',
                         '-H', 'Content-Type: application/vnd.kmdc.envelope',
                         '--data-binary', "\@$env", "$url/send");
    return $rc ? "curl $rc: $out" : $out;
}

1;
