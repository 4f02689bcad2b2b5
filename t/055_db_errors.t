# t/055_db_errors.t - failures an operator can see (issue 10, point 4).
#
# The second server of t/conf/extra.conf.in (<VirtualHost kmdc_lp>) serves the
# same API with database connections as kmdc_t_httpd, a role that t/run-suite
# gives exactly the grants of docs/ADMIN.md section 2.  The test
#   - sends through it (the documented grants are enough);
#   - revokes INSERT on audit_log: the send answers 503, the error log shows
#     the failed statement at error level with its purpose and SQLSTATE class
#     (and neither the server's message nor an address), /health answers 503
#     degraded, kmdc_db_errors_total{class="42"} counts it, and the main
#     server (another database role) stays healthy; the grant is restored and
#     the same envelope is accepted;
#   - makes the same INSERT fail with disk_full (a trigger raising SQLSTATE
#     53100, as PostgreSQL does when it cannot extend a file): the same, with
#     class 53 and reason disk_full;
#   - fails an activation (logged at warn) until the card locks (at error).
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use Apache::TestRequest ();
use JSON::PP ();
use KmdcClient qw(sql slurp path);
use KmdcIntake qw(issue seal post_envelope write_bytes random_bytes);
use KmdcTest qw(issue_card activate form_body);

my $json = JSON::PP->new;
my $main_url = Apache::TestRequest::resolve_url('/kmdc');
$main_url =~ s{/+$}{};
Apache::TestRequest::module('kmdc_lp');
my $lp_url = Apache::TestRequest::resolve_url('/kmdc');
$lp_url =~ s{/+$}{};
Apache::TestRequest::module('default');
my $metrics_url = Apache::TestRequest::resolve_url('/kmdc-metrics');
my $log = "$FindBin::Bin/logs/error_log";

# (status, decoded JSON or undef, headers) of GET url with curl.
sub get {
    my ($url) = @_;
    my $body = path('.body');
    my $hdrs = path('.hdrs');
    my $code = `curl -sS -o '$body' -D '$hdrs' -w '%{http_code}' '$url'`;
    my $raw = slurp($body);
    my $j = eval { $json->decode($raw) };
    my $h = slurp($hdrs);
    unlink $body, $hdrs;
    return (($code || 0) + 0, $j, $h);
}

# The value of one metrics sample (0 when absent).
sub metric {
    my ($sample) = @_;
    my $text = `curl -sS '$metrics_url'`;
    for my $line (split /\n/, $text) {
        return $1 + 0 if $line =~ /^\Q$sample\E (\S+)$/;
    }
    return 0;
}

# The lines the error log got since offset (it only grows during a run).
sub log_since {
    my ($off) = @_;
    my $all = slurp($log);
    return length($all) > $off ? substr($all, $off) : '';
}

# Wait (up to 5 s) until the error log since offset matches re.
sub wait_log {
    my ($off, $re) = @_;
    for (1 .. 50) {
        my $t = log_since($off);
        return $t if $t =~ $re;
        select(undef, undef, undef, 0.1);
    }
    return log_since($off);
}

my $doc = write_bytes(path('.doc'), random_bytes(4096));
my $alice = issue('alice-055');
my $bob = issue('bob-055');

# ---- 1. the documented grants are enough -------------------------------------
{
    my ($st, $j) = get("$lp_url/health");
    is($st, 200, 'least-privileged server: /health 200 with the grants of ADMIN.md')
        or diag(explain($j));
    my $res = post_envelope(seal($alice, $bob->{addr}, $doc), url => $lp_url);
    is($res->{code}, 201, 'least-privileged server: a send is accepted')
        or diag($res->{body});
}

# ---- 2. a missing grant ------------------------------------------------------
subtest '2. a missing grant' => sub {
    {
        my $c42 = metric('kmdc_db_errors_total{class="42"}');
        my $off = length slurp($log);
        sql('REVOKE INSERT ON audit_log FROM kmdc_t_httpd');
        my $env = seal($alice, $bob->{addr}, $doc);
        my $res = post_envelope($env, url => $lp_url);
        is($res->{code}, 503, 'INSERT on audit_log revoked: the send answers 503');
        is($res->{json} && $res->{json}{error}, 'unavailable', '... unavailable');
        my $t = wait_log($off, qr/database statement failed/);
        my @err = grep { /database statement failed/ } split /\n/, $t;
        ok(@err >= 1, 'the failed statement is logged') or diag($t);
        like($err[0] // '', qr/\[kmdc:error\]/, '... at error level');
        like($err[0] // '', qr/SQLSTATE 42501, class 42 \(syntax error or access rule violation\)/,
             '... with its SQLSTATE and class');
        like($err[0] // '', qr/failed: publish \(INSERT audit_log\)/,
             '... and what the statement was for');
        unlike($t, qr/\[kmdc:(?:warn|error|crit)\][^\n]*permission denied/,
               'the server\'s message is not at warn or above');
        unlike($t, qr/alice-055|bob-055/, 'no address in the log');
        my ($st, $j, $h) = get("$lp_url/health");
        is($st, 503, '/health answers 503 while permission errors recur');
        is($j && $j->{status}, 'degraded', '... status degraded');
        is($j && $j->{reason}, 'permission_denied', '... reason permission_denied');
        like($h, qr/^Retry-After: 5\r?$/mi, '... with Retry-After');
        ($st) = get("$main_url/health");
        is($st, 200, 'the main server (another database role) stays healthy');
        cmp_ok(metric('kmdc_db_errors_total{class="42"}'), '>=', $c42 + 1,
               'kmdc_db_errors_total{class="42"} counts it');
        sql('GRANT INSERT ON audit_log TO kmdc_t_httpd');
        $res = post_envelope($env, url => $lp_url);
        is($res->{code}, 201, 'grant restored: the same envelope is accepted')
            or diag($res->{body});
    }
};

# ---- 3. a full disk --------------------------------------------------------------
subtest '3. a full disk' => sub {
    {
        my $c53 = metric('kmdc_db_errors_total{class="53"}');
        my $off = length slurp($log);
        sql(q{CREATE FUNCTION kmdc_t_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
              BEGIN RAISE EXCEPTION 'could not extend file "base/1/2": No space left on device'
                    USING ERRCODE = 'disk_full'; END $$});
        sql('CREATE TRIGGER kmdc_t_disk_full BEFORE INSERT ON audit_log '
            . 'FOR EACH ROW EXECUTE FUNCTION kmdc_t_disk_full()');
        my $env = seal($alice, $bob->{addr}, $doc);
        my $res = post_envelope($env, url => $lp_url);
        is($res->{code}, 503, 'disk full: the send answers 503');
        my $t = wait_log($off, qr/database statement failed/);
        my ($err) = grep { /database statement failed/ } split /\n/, $t;
        like($err // '', qr/\[kmdc:error\].*SQLSTATE 53100, class 53 \(insufficient resources\)/,
             '... logged at error with SQLSTATE 53100, class 53') or diag($t);
        unlike(join("\n", grep { /\[kmdc:(?:warn|error|crit)\]/ } split /\n/, $t),
               qr{base/1/2}, '... never the file name of the server\'s message');
        my ($st, $j) = get("$lp_url/health");
        is($st, 503, '/health answers 503');
        is($j && $j->{reason}, 'disk_full', '... reason disk_full (the most recent)');
        cmp_ok(metric('kmdc_db_errors_total{class="53"}'), '>=', $c53 + 1,
               'kmdc_db_errors_total{class="53"} counts it');
        sql('DROP TRIGGER kmdc_t_disk_full ON audit_log');
        sql('DROP FUNCTION kmdc_t_disk_full()');
        $res = post_envelope($env, url => $lp_url);
        is($res->{code}, 201, 'space back: the same envelope is accepted') or diag($res->{body});
        ($st) = get("$main_url/health");
        is($st, 200, 'the main server stays healthy');
    }
};

# ---- 4. activations ------------------------------------------------------------
subtest '4. activations' => sub {
    {
        my $card = issue_card('mallory-055');
        my $off = length slurp($log);
        my $bad = $card->{code} eq 'AAAAA-AAAAA' ? 'BBBBB-BBBBB' : 'AAAAA-AAAAA';
        my $res = activate($card, code => $bad);
        is($res->code, 403, 'a wrong access code: 403');
        my $t = wait_log($off, qr/wrong access code/);
        like($t, qr/\[kmdc:warn\][^\n]*activate: card $card->{serial}: wrong access code, failure 1/,
             '... logged at warn');
        $res = activate($card, code => $bad) for 2 .. 5;
        is($res->code, 403, 'the fifth wrong code: 403');
        like($res->content, qr/"locked"/, '... locked');
        $t = wait_log($off, qr/card locked/);
        like($t, qr/\[kmdc:error\][^\n]*card $card->{serial}: wrong access code, failure 5, card locked/,
             'the card that locks is logged at error');
        $off = length slurp($log);
        $res = activate($card);
        like($res->content, qr/"locked"/, 'the right code on a locked card: locked');
        $t = wait_log($off, qr/locked card/);
        like($t, qr/\[kmdc:warn\][^\n]*card $card->{serial}: an attempt on a locked card/,
             '... logged at warn');
        unlike($t . log_since(0), qr/\Q$card->{code}\E|\Q$bad\E/, 'no access code in the log');
    }
};

done_testing();
