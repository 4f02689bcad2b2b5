# t/070_browser.t - the browser page, GET {location} and {location}/: plain
# curl checks of its headers and markup, then Debian's headless Chromium
# (driven by t/browser_upload.py through chromedriver) uploads an envelope
# sealed with the real kmdc through the page, and the test verifies what the
# page showed, the recipient's mailbox (kmdc fetch, byte for byte) and the
# status form with a `kmdc sign`ed header (queued, then delivered).
#
# Needs the Debian packages chromium, chromium-driver and python3-selenium
# (scripts/check installs them).  Without them the browser tests FAIL with a
# hint; KMDC_SKIP_BROWSER=1 skips them on purpose (the curl tests still run).
# KMDC_PYTHON chooses the Python 3 that has selenium (default /usr/bin/python3).
# Screenshots: t/logs/browser.png (upload answer), t/logs/browser-status.png.
use strict;
use warnings FATAL => 'all';

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use Digest::SHA qw(sha256_base64);
use File::Compare qw(compare);
use IO::Socket::INET ();
use JSON::PP ();
use FindBin ();
use lib "$FindBin::Bin/lib";
use KmdcUtil qw(run sql slurp spew workdir kmdcadm_issue);

my $build = $ENV{KMDC_BUILD} or die "KMDC_BUILD not set: run t/run-suite BUILD_DIR\n";
my $src = $ENV{KMDC_SRCDIR} // '.';
my $kmdc = "$build/kmdc/kmdc";
my $python = $ENV{KMDC_PYTHON} // '/usr/bin/python3';
my $driver_script = "$src/t/browser_upload.py";
my $url = Apache::TestRequest::resolve_url('/kmdc');
$url =~ s{/+$}{};
my $dir = workdir();
my $json = JSON::PP->new;

# ---- helpers ----------------------------------------------------------------

my $n_files = 0;
sub tmpfile { $n_files++; return "$dir/f$n_files" . ($_[0] // '') }

# curl: (status, headers as one string, body) of METHOD on url.
sub curl {
    my ($method, $u) = @_;
    my $body = tmpfile('.body');
    my $hdrs = tmpfile('.hdr');
    my @c = ('curl', '-sS', '-o', $body, '-D', $hdrs, '-w', '%{http_code}');
    push @c, $method eq 'HEAD' ? ('-I') : ('-X', $method);
    my ($rc, $code) = run(@c, $u);
    die "curl failed ($rc): $code" if $rc;
    return ($code + 0, slurp($hdrs), slurp($body));
}

# HEAD target over a raw HTTP/1.0 connection: whatever follows the header
# block until the server closes (a body, if any).
sub raw_head {
    my ($target) = @_;
    my ($host, $port) = $url =~ m{^http://([^/:]+):(\d+)} or die "cannot parse $url";
    my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Timeout => 30)
        or die "connect $host:$port: $!";
    print $s "HEAD $target HTTP/1.0\r\nHost: $host:$port\r\n\r\n";
    local $/;
    my $all = <$s> // '';
    close $s;
    my ($head, $rest) = split /\r\n\r\n/, $all, 2;
    return $rest // 'no end of the header block';
}

# One header's value from a header block (undef when absent).
sub header {
    my ($hdrs, $name) = @_;
    my ($v) = $hdrs =~ /^\Q$name\E:[ \t]*([^\r\n]*)\r?$/mi;
    return $v;
}

sub card {
    my ($addr) = @_;
    my $file = "$dir/$addr.card";
    my $i = kmdcadm_issue(address => $addr, url => $url, file => $file);
    my ($rc, $out) = run($kmdc, '--card', $file, 'activate', $i->{code});
    die "kmdc activate $addr failed ($rc): $out" if $rc;
    return { addr => $addr, file => $file, serial => $i->{serial} };
}

# A document of n pseudo-random bytes.
sub document {
    my ($n) = @_;
    my $b = '';
    my $x = 12345;
    while (length $b < $n) {
        $x = ($x * 1103515245 + 12345) % 2147483648;
        $b .= pack('N', $x);
    }
    return spew(tmpfile('.doc'), substr($b, 0, $n));
}

sub seal {
    my ($from, $to, $doc, @extra) = @_;
    my $out = tmpfile('.kmdc');
    my ($rc, $msg) = run($kmdc, '--card', $from->{file}, 'seal', '--to', $to, @extra,
                         '-o', $out, $doc);
    die "kmdc seal failed ($rc): $msg" if $rc;
    return $out;
}

sub fetch {
    my ($card) = @_;
    my $d = tmpfile('.dir');
    mkdir $d or die;
    my ($rc, $out) = run($kmdc, '--card', $card->{file}, 'fetch', '-d', $d);
    opendir my $dh, $d or die;
    my @files = sort grep { !/^\./ } readdir $dh;
    return ($rc, $d, \@files, $out);
}

# The Authorization value `kmdc sign` prints, as a user would copy it (the
# whole line, "Authorization: " included).
sub sign {
    my ($card, $method, $target) = @_;
    my ($rc, $out) = run($kmdc, '--card', $card->{file}, 'sign', $method, $target);
    die "kmdc sign failed ($rc): $out" if $rc;
    chomp $out;
    return $out;
}

# Run t/browser_upload.py; (exit status, decoded JSON or undef, stderr).
sub browser {
    my @args = @_;
    my $err = tmpfile('.err');
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>', $err or die;
        delete @ENV{qw(http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY)};
        $ENV{PYTHONDONTWRITEBYTECODE} = 1;
        exec 'timeout', '180', $python, $driver_script, @args
            or die "exec $python: $!";
    }
    local $/;
    my $out = <$fh> // '';
    close $fh;
    my $rc = $? >> 8;
    my $j = eval { $json->decode($out) };
    return ($rc, $j, slurp($err));
}

# ---- the page over plain HTTP ------------------------------------------------------

my ($code, $h, $page) = curl('GET', $url);
is($code, 200, 'page: GET /kmdc answers 200');
like(header($h, 'Content-Type') // '', qr{^text/html;\s*charset=utf-8$}i,
     'page: Content-Type text/html; charset=utf-8');
my $csp = header($h, 'Content-Security-Policy') // '';
like($csp, qr/(?:^|;\s*)default-src 'self'(?:;|$)/, "page: CSP default-src 'self'");
my ($script) = $page =~ m{<script>(.*?)</script>}s;
my ($style) = $page =~ m{<style>(.*?)</style>}s;
ok(defined $script && defined $style, 'page: one inline script and one inline style');
my @scripts = $page =~ m{<script\b}g;
is(scalar @scripts, 1, 'page: exactly one script element');
my $script_hash = defined $script ? "'sha256-" . sha256_base64($script) . "='" : 'none';
my $style_hash = defined $style ? "'sha256-" . sha256_base64($style) . "='" : 'none';
like($csp, qr/(?:^|;\s*)script-src \Q$script_hash\E(?:;|$)/,
     'page: CSP script-src is exactly the hash of the inline script');
like($csp, qr/(?:^|;\s*)style-src \Q$style_hash\E(?:;|$)/,
     'page: CSP style-src is exactly the hash of the inline style');
like($csp, qr/frame-ancestors 'none'/, "page: CSP frame-ancestors 'none'");
unlike($csp, qr/unsafe-inline|unsafe-eval|\*/, 'page: CSP allows nothing unsafe or wild');
is(header($h, 'X-Frame-Options'), 'DENY', 'page: X-Frame-Options DENY');
is(header($h, 'X-Content-Type-Options'), 'nosniff', 'page: X-Content-Type-Options nosniff');
unlike($page, qr{\b(?:src|href)\s*=|url\(|\@import}i,
       'page: loads no other resource (no src, href, url() or @import)');
unlike($page, qr{\son[a-z]+\s*=|style\s*=\s*"}i,
       'page: no inline event handlers or style attributes (the CSP would block them)');
like($page, qr{<form id="send-form" method="post" action="/kmdc/send"\s+enctype="multipart/form-data"},
     'page: the upload form posts multipart/form-data to /kmdc/send');
like($page, qr{<input id="envelope" name="envelope" type="file"},
     'page: a file input named envelope');
my @labels = $page =~ m{<label for="([^"]+)"}g;
my @inputs = $page =~ m{<(?:input|textarea) id="([^"]+)"}g;
is(join(',', sort @labels), join(',', sort @inputs), 'page: every input has a label');
like($page, qr{kmdc sign GET\s+/kmdc/messages/ID}, 'page: the status form explains kmdc sign');
like($page, qr{<html lang="en">}, 'page: the language is declared');

my ($code2, $h2, $page2) = curl('GET', "$url/");
is($code2, 200, 'page: GET /kmdc/ answers 200');
is($page2, $page, 'page: /kmdc/ serves the same page');

my ($code3, $h3) = curl('HEAD', "$url/");
is($code3, 200, 'page: HEAD /kmdc/ answers 200');
is(raw_head("/kmdc/"), '', 'page: HEAD has no body (read from the socket to its end)');
like(header($h3, 'Content-Type') // '', qr{^text/html}i, 'page: HEAD has the Content-Type');
is(header($h3, 'Content-Security-Policy'), $csp, 'page: HEAD has the same CSP');
is(header($h3, 'Content-Length'), length($page), 'page: HEAD announces the length of GET');

my ($code4, $h4, $body4) = curl('POST', "$url/");
is($code4, 405, 'page: POST /kmdc/ answers 405');
is(header($h4, 'Allow'), 'GET, HEAD', 'page: Allow: GET, HEAD');

my ($code5, undef, $body5) = curl('GET', "$url/index.html");
is($code5, 404, 'page: GET /kmdc/index.html answers 404 (only the location itself)');
my $j5 = eval { $json->decode($body5) };
is($j5 && $j5->{error}, 'not_found', 'page: ... with the JSON error not_found');

# ---- the page in Chromium ----------------------------------------------------------

my $alice = card('alice-web');
my $bob = card('bob-web');
ok($alice && $bob, 'browser: two cards issued and activated with kmdc');

SKIP: {
    skip 'KMDC_SKIP_BROWSER=1', 36 if $ENV{KMDC_SKIP_BROWSER};
    my ($prc, $pout) = run($python, '-c', 'import selenium');
    my $have = $prc == 0 && -x '/usr/bin/chromium' && -x '/usr/bin/chromedriver';
    $have = 1 if $prc == 0 && $ENV{KMDC_CHROMIUM} && $ENV{KMDC_CHROMEDRIVER};
    ok($have, 'browser: chromium, chromedriver and python3-selenium are installed')
        or diag("install the Debian packages chromium chromium-driver python3-selenium "
                . "(or set KMDC_SKIP_BROWSER=1): $pout");
    skip 'no browser', 35 unless $have;

    my $page_url = "$url/";
    my $doc = document(2 * 65536 + 123);
    my $env = seal($alice, $bob->{addr}, $doc, '--name', 'browser-doc.bin');

    # upload through the page
    my ($rc, $j, $err) = browser('--screenshot', "$src/t/logs/browser.png",
                                 '--driver-log', "$src/t/logs/chromedriver.log",
                                 'upload', $page_url, $env);
    is($rc, 0, 'upload: the browser drove the page') or diag($err);
    $j //= {};
    is($j->{status}, '201', 'upload: the page shows status 201') or diag(explain($j));
    like($j->{title} // '', qr/^201 Created/, 'upload: ... titled 201 Created');
    my $id = $j->{message} // '';
    like($id, qr/^[0-9a-f]{16}$/, 'upload: the page shows the message id');
    is($j->{deliveries}, '1', 'upload: ... and one delivery');
    is_deeply($j->{csp_errors}, [], 'upload: no Content Security Policy violation');
    is($j->{status_id}, $id, 'upload: the status form is prefilled with the id');
    is($j->{sign_command}, "kmdc sign GET /kmdc/messages/$id",
       'upload: the page shows the exact kmdc sign command');
    is(sql("SELECT count(*) FROM messages WHERE id = x'" . ($id || '0') . "'::bigint "
           . "AND sender = x'$alice->{serial}'::bigint"), 1,
       'upload: the message is in the database, sent by the card');
    ok(-s "$src/t/logs/browser.png", 'upload: screenshot t/logs/browser.png written');

    # its status, queued
    ($rc, $j, $err) = browser('status', $page_url, $id,
                              sign($alice, 'GET', "/kmdc/messages/$id"));
    is($rc, 0, 'status queued: the browser drove the status form') or diag($err);
    $j //= {};
    is($j->{status}, '200', 'status queued: the page shows 200') or diag(explain($j));
    is_deeply($j->{recipients}, [[$bob->{addr}, 'queued']],
              'status queued: the recipient is listed as queued');
    is($j->{auth_left}, '', 'status queued: the used header is cleared from the form');
    is_deeply($j->{csp_errors}, [], 'status queued: no Content Security Policy violation');

    # the recipient's mailbox
    my ($frc, $d, $files, $fout) = fetch($bob);
    is($frc, 0, 'mailbox: bob fetches') or diag($fout);
    is_deeply($files, ['browser-doc.bin'], 'mailbox: one file, under its NAME');
    ok(@$files == 1 && compare("$d/$files->[0]", $doc) == 0,
       'mailbox: the document arrived byte for byte');

    # its status, delivered; the same header twice is a replay
    my $auth = sign($alice, 'GET', "/kmdc/messages/$id");
    ($rc, $j, $err) = browser('--screenshot', "$src/t/logs/browser-status.png",
                              'status', $page_url, $id, $auth);
    is($rc, 0, 'status delivered: the browser drove the status form') or diag($err);
    $j //= {};
    is($j->{status}, '200', 'status delivered: the page shows 200') or diag(explain($j));
    is_deeply($j->{recipients}, [[$bob->{addr}, 'delivered']],
              'status delivered: the recipient is listed as delivered');
    ($rc, $j, $err) = browser('status', $page_url, $id, $auth);
    $j //= {};
    is($j->{status}, '401', 'status replayed: the page shows 401') or diag($err);
    like($j->{title} // '', qr/^401 unauthorized/, 'status replayed: ... with the error code');

    # a byte-identical retry through the page repeats the first answer
    ($rc, $j, $err) = browser('upload', $page_url, $env);
    $j //= {};
    is($j->{status}, '200', 'retry: the page shows 200') or diag($err);
    is($j->{message}, $id, 'retry: the same message id');
    like($j->{title} // '', qr/sent before/, 'retry: the page says it was sent before');

    # an error answer is rendered with its code and message
    my $junk = spew(tmpfile('.kmdc'), 'this is not an envelope, just text' x 3);
    ($rc, $j, $err) = browser('upload', $page_url, $junk);
    $j //= {};
    is($j->{status}, '400', 'junk: the page shows 400') or diag($err);
    like($j->{title} // '', qr/^400 bad_envelope$/, 'junk: ... with the error code');
    like($j->{text} // '', qr/\S/, 'junk: ... and its message');
    ok(!defined $j->{message}, 'junk: no message id shown');

    # without JavaScript the form posts itself and the browser shows the JSON
    my $doc2 = document(1000);
    my $env2 = seal($alice, $bob->{addr}, $doc2, '--name', 'nojs.bin');
    ($rc, $j, $err) = browser('--no-js', 'upload', $page_url, $env2);
    is($rc, 0, 'no script: the browser posted the form') or diag($err);
    $j //= {};
    like($j->{url} // '', qr{/kmdc/send$}, 'no script: the browser went to /kmdc/send');
    my $shown = eval { $json->decode($j->{body} // '') };
    ok($shown && ($shown->{message} // '') =~ /^[0-9a-f]{16}$/ && $shown->{deliveries} == 1,
       'no script: the browser shows the JSON answer') or diag($j->{body});
    ($frc, $d, $files, $fout) = fetch($bob);
    ok($frc == 0 && @$files == 1 && compare("$d/$files->[0]", $doc2) == 0,
       'no script: bob gets that document byte for byte') or diag($fout);

    # a status form without a proper header is refused by the page itself
    ($rc, $j, $err) = browser('status', $page_url, $id, 'not a header');
    $j //= {};
    is($j->{status}, '0', 'status: a pasted non-header is refused before any request')
        or diag($err);
}

done_testing();
