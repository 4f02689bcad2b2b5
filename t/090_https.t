# t/090_https.t - the service over https: a test CA and a server certificate
# for 127.0.0.1 and localhost made with the openssl command, an httpd of its
# own with mod_ssl and the built module (the suite's database and master
# key), cards issued for the https URL, and the real kmdc client: it works
# with --cacert, refuses a certificate it cannot verify (no CA given, another
# CA, a name the certificate does not carry) without changing any state, and
# with --insecure works but warns.  Plain curl --cacert reaches /health and,
# with `kmdc sign`, a signed endpoint.
# Logs and configuration: t/logs/090_https/.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Path qw(make_path remove_tree);
use File::Spec ();
use File::Temp qw(tempdir);
use JSON::PP ();
use KmdcCluster qw(:all);

for my $v (qw(KMDC_BUILD KMDC_MODULE KMDC_CONNINFO KMDC_MASTER_KEY_FILE PGHOST PGPORT)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

# Only the CA files a test names may be trusted.
delete @ENV{qw(SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE)};

my $build = $ENV{KMDC_BUILD};
my $kmdc = "$build/kmdc/kmdc";
my $kmdcadm = "$build/admin/kmdcadm";
my $mkey = $ENV{KMDC_MASTER_KEY_FILE};
my $root = File::Spec->rel2abs('t/logs/090_https');
my $work = tempdir('kmdc-https-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0700, $work;
my $json = JSON::PP->new;

remove_tree($root);
make_path($root);

# ---- a test CA, a server certificate, and an unrelated CA --------------------------

my $pki = "$root/pki";
make_path($pki);
sub openssl {
    my ($rc, $out) = run('openssl', @_);
    diag("openssl @_[0 .. 1]: $out") if $rc;
    return $rc == 0;
}
my $ca = "$pki/ca.pem";
my $other = "$pki/other-ca.pem";
my $srv = "$pki/server.pem";
my $srvkey = "$pki/server.key";
spew("$pki/server.ext", <<'EOF');
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
my @ec = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes');
my $pki_ok =
    openssl('req', '-x509', @ec, '-keyout', "$pki/ca.key", '-out', $ca, '-days', '2',
            '-subj', '/CN=mod_kmdc test CA', '-addext', 'basicConstraints=critical,CA:TRUE',
            '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
    && openssl('req', '-x509', @ec, '-keyout', "$pki/other-ca.key", '-out', $other,
               '-days', '2', '-subj', '/CN=mod_kmdc other CA',
               '-addext', 'basicConstraints=critical,CA:TRUE',
               '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
    && openssl('req', '-new', @ec, '-keyout', $srvkey, '-out', "$pki/server.csr",
               '-subj', '/CN=127.0.0.1')
    && openssl('x509', '-req', '-in', "$pki/server.csr", '-CA', $ca, '-CAkey', "$pki/ca.key",
               '-CAcreateserial', '-out', $srv, '-days', '2', '-extfile', "$pki/server.ext");
chmod 0600, $srvkey, "$pki/ca.key", "$pki/other-ca.key";
{
    my ($rc, $text) = run('openssl', 'x509', '-in', $srv, '-noout', '-text');
    my ($vrc, $vout) = run('openssl', 'verify', '-CAfile', $ca, $srv);
    ok($pki_ok && $rc == 0 && $text =~ /IP Address:127\.0\.0\.1/ && $text =~ /DNS:localhost/
       && $vrc == 0, 'pki: openssl made a test CA and a server certificate for 127.0.0.1 and '
       . 'localhost that verifies against it') or diag("$text\n$vout");
}
BAIL_OUT('no test certificates') unless $pki_ok;

# ---- httpd with mod_ssl and the module ---------------------------------------------

my $port = free_port();
my $base = "https://127.0.0.1:$port/kmdc";
my $h = httpd_start(
    dir => $root,
    listen => ["127.0.0.1:$port https", "127.0.0.2:$port https"],
    modules => { ssl_module => 'mod_ssl.so', socache_shmcb_module => 'mod_socache_shmcb.so' },
    servers => 1, threads => 8,
    probe => "$base/health", curl => ['--cacert', $ca],
    body => <<"EOF");
SSLSessionCache "shmcb:$root/ssl_scache(512000)"
SSLEngine on
SSLCertificateFile "$srv"
SSLCertificateKeyFile "$srvkey"
KmdcDatabase "$ENV{KMDC_CONNINFO}"
KmdcMasterKey 1 "$mkey"
KmdcDbPool 1 4
<Location /kmdc>
    SetHandler kmdc
</Location>
EOF
ok($h->{started}, 'httpd: an httpd with mod_ssl (SSLEngine on) and the module starts')
    or diag($h->{log});
BAIL_OUT('the https server did not start') unless $h->{started};

# ---- plain curl ----------------------------------------------------------------------
subtest 'plain curl' => sub {
    {
        my ($code, $body, $crc) = http_get("$base/health", '--cacert', $ca);
        ok($code == 200 && $body =~ /"status":"ok"/,
           'curl --cacert: /health over https answers 200') or diag("$code $crc $body");
        ($code, $body, $crc) = http_get("https://localhost:$port/kmdc/health", '--cacert', $ca,
                                        '--resolve', "localhost:$port:127.0.0.1");
        ok($code == 200, 'curl --cacert: the name localhost verifies too') or diag("$code $crc");
        ($code, $body, $crc) = http_get("$base/health");
        ok($code == 0 && $crc == 60, 'curl without --cacert: the certificate does not verify '
           . '(curl exit 60)') or diag("$code $crc");
        ($code, $body, $crc) = http_get("$base/health", '--cacert', $other);
        ok($code == 0 && $crc == 60, 'curl --cacert OTHER-CA: refused (exit 60)')
            or diag("$code $crc");
        ($code, $body) = http_get("http://127.0.0.1:$port/kmdc/health");
        is($code, 400, 'plain http to the https port: 400');
    }
};

# ---- cards for the https URL -----------------------------------------------------------

my %card;
for my $addr ('tls-alice', 'tls-bob') {
    $card{$addr} = issue(db => $ENV{KMDC_CONNINFO}, keys => ["1:$mkey"], url => $base,
                         address => $addr, file => "$work/$addr.card");
}
my $alice = $card{'tls-alice'};
my $bob = $card{'tls-bob'};
sub dbstate {
    my ($c) = @_;
    return sql('kmdc', "SELECT status || ':' || up_next || ':' || down_next || ':' "
               . "|| (SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
               . "AND d.state = 'queued') FROM cards c WHERE serial = x'$c->{serial}'::bigint");
}
# t/run-suite's KMDC_URL (the plain http server) would stand for --url in kmdc:
# these cards carry the https URL, so kmdc must not see it
sub k { delete local $ENV{KMDC_URL}; return run($kmdc, '--card', $_[0]{file}, @_[1 .. $#_]) }
sub k3 { delete local $ENV{KMDC_URL}; return run3($kmdc, '--card', $_[0]{file}, @_[1 .. $#_]) }

{
    my $before = dbstate($alice);
    my ($rc, $out) = k($alice, 'activate', $alice->{code});
    is($rc, 8, 'activate without --cacert: refused, exit 8 (documented "configuration")') or diag($out);
    like($out, qr/certificate did not verify.*--cacert/s,
         'activate without --cacert: kmdc says the certificate did not verify and names --cacert');
    ok(dbstate($alice) eq $before && dbstate($alice) =~ /^issued:/,
       'activate without --cacert: the card is still issued, nothing changed');
    ($rc, $out) = k($alice, '--cacert', $ca, 'activate', $alice->{code});
    is($rc, 0, 'activate --cacert: the card activates over https') or diag($out);
    ($rc, $out) = k($bob, '--cacert', $ca, 'activate', $bob->{code});
    is($rc, 0, 'activate --cacert: the second card too') or diag($out);
    ok(dbstate($alice) =~ /^active:0:0:0$/ && dbstate($bob) =~ /^active:0:0:0$/,
       'activate --cacert: both cards active in the database');
}

# ---- send and fetch over https -----------------------------------------------------------

my $doc1 = spew("$work/report.txt", join('', map { "line $_ of the https report\n" } 1 .. 3000));
my $doc2 = spew("$work/second.bin", join('', map { chr($_ % 251) } 0 .. 70000));
my $doc3 = spew("$work/third.txt", "third\n");
my $msgid;
{
    my ($rc, $out) = k($alice, '--cacert', $ca, 'send', '--to', 'tls-bob', $doc1);
    is($rc, 0, 'send --cacert: exit 0') or diag($out);
    ($msgid) = $out =~ /^([0-9a-f]{16}) 1 /m;
    ok($msgid, 'send --cacert: kmdc prints the message id and one delivery') or diag($out);
    my $d = "$work/in1";
    mkdir $d;
    ($rc, $out) = k($bob, '--cacert', $ca, 'fetch', '-d', $d);
    is($rc, 0, 'fetch --cacert: exit 0') or diag($out);
    is(slurp("$d/report.txt"), slurp($doc1), 'fetch --cacert: the document arrived byte for byte');
    ($rc, $out) = k($alice, '--cacert', $ca, 'status', $msgid // '0');
    ok($rc == 0 && $out =~ /tls-bob\s+delivered/, 'status --cacert: the sender sees it delivered')
        or diag($out);
}

# ---- refusals: no CA, another CA, another name -----------------------------------------------
subtest 'refusals: no CA, another CA, another name' => sub {
    {
        my $a0 = dbstate($alice);
        my $b0 = dbstate($bob);
        my ($rc, $out) = k($alice, 'send', '--to', 'tls-bob', $doc2);
        is($rc, 8, 'send without --cacert: refused, exit 8 (configuration)') or diag($out);
        like($out, qr/certificate did not verify/, 'send without --cacert: the reason is the '
             . 'certificate');
        my $ci = card_info($kmdc, $alice->{file});
        ok(dbstate($alice) eq $a0 && dbstate($bob) eq $b0 && $ci && $ci->{outbox} == 1,
           'send without --cacert: nothing reached the datacenter; the envelope waits in the outbox')
            or diag(dbstate($alice) . ' ' . ($ci ? $ci->{outbox} : '?'));

        ($rc, $out) = k($alice, '--cacert', $other, 'send', '--to', 'tls-bob', $doc3);
        ok($rc == 8 && $out =~ /certificate did not verify/ && dbstate($alice) eq $a0,
           'send --cacert OTHER-CA: refused (exit 8), nothing sent') or diag($out);

        ($rc, $out) = k($alice, '--cacert', $ca, '--url', "https://127.0.0.2:$port/kmdc", 'send',
                        '--to', 'tls-bob', $doc3);
        ok($rc == 8 && $out =~ /certificate did not verify/ && dbstate($alice) eq $a0,
           'send to 127.0.0.2 (not in the certificate) with the right CA: refused, nothing sent')
            or diag($out);

        ($rc, $out) = k($alice, '--cacert', $ca, 'send', '--to', 'tls-bob', $doc3);
        is($rc, 0, 'send --cacert: the kept envelope and the new one go through') or diag($out);
        my @ids = $out =~ /^([0-9a-f]{16}) 1 /mg;
        ok(@ids == 2 && dbstate($alice) =~ /^active:3:/, 'send --cacert: two messages, alice\'s '
           . 'up_next is 3 (the refused attempts sealed nothing twice)')
            or diag($out . dbstate($alice));

        my $d = "$work/in2";
        mkdir $d;
        my $b1 = dbstate($bob);
        ($rc, $out) = k($bob, 'fetch', '-d', $d);
        ok($rc == 8 && $out =~ /certificate did not verify/, 'fetch without --cacert: refused, exit 8')
            or diag($out);
        opendir my $dh, $d or die;
        my @f = grep { !/^\./ } readdir $dh;
        ok(!@f && dbstate($bob) eq $b1 && $b1 =~ /:2$/,
           'fetch without --cacert: no file written, both deliveries still queued')
            or diag("@f " . dbstate($bob));
        ($rc, $out) = k($bob, '--cacert', $ca, '--url', "https://127.0.0.2:$port/kmdc",
                        'fetch', '-d', $d);
        ok($rc == 8 && $out =~ /certificate did not verify/,
           'fetch from a name the certificate does not carry: refused, exit 8') or diag($out);

        # --insecure works, and says so
        my ($irc, $iout, $ierr) = k3($bob, '--insecure', 'fetch', '-d', $d);
        is($irc, 0, 'fetch --insecure: exit 0') or diag("$iout$ierr");
        like($ierr, qr/warning: --insecure: the datacenter's TLS certificate is not verified/,
             'fetch --insecure: a warning on stderr');
        opendir $dh, $d or die;
        @f = sort grep { !/^\./ } readdir $dh;
        ok("@f" eq 'second.bin third.txt' && slurp("$d/second.bin") eq slurp($doc2)
           && slurp("$d/third.txt") eq slurp($doc3),
           'fetch --insecure: both documents arrived once, byte for byte') or diag("@f");
        ok(dbstate($bob) =~ /^active:0:3:0$/, 'fetch --insecure: the mailbox is empty');
        my ($src, $sout, $serr) = k3($alice, '--insecure', 'send', '--to', 'tls-bob', $doc3);
        ok($src == 0 && $serr =~ /warning: --insecure/, 'send --insecure: works and warns')
            or diag("$sout$serr");
    }
};

# ---- a signed request with kmdc sign and plain curl --------------------------------------------
subtest 'a signed request with kmdc sign and plain curl' => sub {
    {
        my $target = "/kmdc/mailbox/$bob->{serial}";
        my ($rc, $hdr) = k($bob, 'sign', 'GET', $target);
        chomp $hdr;
        ok($rc == 0 && $hdr =~ /^Authorization: KMDC1-HMAC-SHA256 /, 'kmdc sign prints an '
           . 'Authorization header') or diag($hdr);
        my ($code, $body) = http_get("https://127.0.0.1:$port$target", '--cacert', $ca, '-H', $hdr);
        my $j = eval { $json->decode($body) };
        ok($code == 200 && ref $j eq 'HASH' && @{ $j->{deliveries} // [] } == 1,
           'curl --cacert with the signed header: the mailbox lists the one pending delivery')
            or diag("$code $body");
    }

    {
        my @crash = grep { /exit signal|Segmentation|AddressSanitizer/ }
            split /\n/, slurp("$root/error_log");
        ok(!@crash, 'httpd: no child crashed') or diag(join "\n", @crash);
    }
};
httpd_stop($h);

done_testing();
