# t/105_client_ux.t - what the kmdc client promises its user, against the
# real httpd and PostgreSQL of t/run-suite:
#  1. file names on receipt: a NAME starting with '.' or '-' is saved with a
#     '_' in front (a fetch in a home folder never makes .bash_profile);
#  2. access codes: kmdcadm prints the code with its check symbol (checked
#     here by an independent implementation of the rule in docs/PROTOCOL.md);
#     a mistyped code is refused by kmdc before anything is sent, so the
#     card's attempt count in the database stays unchanged; the code with or
#     without its check symbol activates; a wrong code is counted and says
#     so; a locked card's message names what the operator must run;
#  3. the progress line: silent when stderr is not a terminal, forced with
#     --progress, "publishing" after the last byte.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Apache::Test qw(-withtestmore);
use KmdcClient qw(:all);

my $kmdc = kmdc_bin();
my $w = workdir();
my $p = "c105-$$";

sub kmdc_run {
    my ($card, @argv) = @_;
    return run({}, $kmdc, '--card', $card->{file}, @argv);
}

sub attempts {
    my ($card) = @_;
    return sql("SELECT activation_failures || '|' || locked || '|' || status FROM cards "
               . "WHERE serial = x'$card->{serial}'::bigint");
}

# The check symbol of docs/PROTOCOL.md: Horner in GF(32) mod x^5 + x^2 + 1.
my $ALPHA = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
sub check_symbol {
    my ($ten) = @_;
    my $s = 0;
    for my $ch (split //, $ten) {
        $s = (($s << 1) ^ (($s & 0x10) ? 0x25 : 0)) & 0x1f;
        $s ^= index($ALPHA, $ch);
    }
    $s = (($s << 1) ^ (($s & 0x10) ? 0x25 : 0)) & 0x1f;
    return substr($ALPHA, $s, 1);
}

# ---- 1. names ------------------------------------------------------------------------
my $alice = card("$p-alice");
my $bob = card("$p-bob");
{
    my $doc = document("$w/profile.txt", 100);
    my @names = ('.bash_profile', '-rf', 'plain.txt');
    my $sent = 0;
    for my $n (@names) {
        my $r = kmdc_run($alice, '-q', 'send', '--to', $bob->{addr}, '--name', $n, $doc);
        $sent++ if ($r->{rc} // 1) == 0;
    }
    is($sent, 3, 'names: .bash_profile, -rf and plain.txt are sent');
    my $home = newdir();
    my $r = kmdc_run($bob, '-q', 'fetch', '-d', $home);
    is($r->{rc}, 0, 'names: bob fetches them') or explain_run($r);
    opendir my $dh, $home or die "$home: $!";
    my @all = sort grep { $_ ne '.' && $_ ne '..' } readdir $dh;
    closedir $dh;
    is_deeply(\@all, [ '_-rf', '_.bash_profile', 'plain.txt' ],
              'names: saved as _.bash_profile, _-rf and plain.txt; no dotfile, no -rf');
    ok(same("$home/_.bash_profile", $doc) && same("$home/_-rf", $doc),
       'names: the documents are intact');
    like($r->{out}, qr{/_\.bash_profile$}m, 'names: fetch prints the name it saved');
}

# ---- 2. access codes -------------------------------------------------------------------
my $carol = card("$p-carol", inactive => 1);
{
    my ($ten, $chk) = $carol->{code} =~ /^([0-9A-Z]{5})-([0-9A-Z]{5})-([0-9A-Z])$/
        ? ("$1$2", $3) : ('', '');
    ok(length $ten && check_symbol($ten) eq $chk,
       'access code: kmdcadm prints XXXXX-XXXXX-C, C the documented check symbol')
        or diag("code $carol->{code}");
    my $r = kmdc_run($carol, 'activate', '12345');
    ok(($r->{rc} // -1) == 2 && $r->{err} =~ /mistyped/ && $r->{err} =~ /no attempt was used/,
       'access code: kmdc activate 12345 is refused locally (exit 2)') or explain_run($r);
    # one symbol changed: the check symbol no longer matches
    my $typo = $carol->{code};
    substr($typo, 2, 1) = substr($typo, 2, 1) eq '7' ? '8' : '7';
    $r = kmdc_run($carol, 'activate', $typo);
    ok(($r->{rc} // -1) == 2 && $r->{err} =~ /check character/,
       'access code: one mistyped symbol is caught by the check symbol (exit 2)')
        or explain_run($r);
    # two neighbours swapped
    my $swap = $carol->{code};
    my ($a, $b) = (substr($swap, 0, 1), substr($swap, 1, 1));
    if ($a ne $b) { substr($swap, 0, 2) = "$b$a" } else { substr($swap, 0, 1) = $a eq '7' ? '8' : '7' }
    $r = kmdc_run($carol, 'activate', $swap);
    is($r->{rc}, 2, 'access code: two swapped symbols are caught too') or explain_run($r);
    is(attempts($carol), '0|false|issued',
       'access code: after three mistyped codes the attempt count is still 0');
    $r = kmdc_run($carol, 'activate', lc $carol->{code});
    is($r->{rc}, 0, 'access code: the code with its check symbol (any case) activates')
        or explain_run($r);
    is(attempts($carol), '0|false|active', 'access code: active, no attempt counted');
}
{
    my $dave = card("$p-dave", inactive => 1);
    my ($ten) = $dave->{code} =~ /^([0-9A-Z]{5}-[0-9A-Z]{5})/;
    my $r = kmdc_run($dave, 'activate', $ten);
    ok(($r->{rc} // -1) == 0 && $r->{err} =~ /no check character/,
       'access code: the 10 symbols alone (a code of an older kmdcadm) still activate, '
       . 'with a note') or explain_run($r);
}
my $erin = card("$p-erin", inactive => 1);
{
    # a well-formed code that is not this card's: counted by the datacenter
    my ($ten) = $erin->{code} =~ /^([0-9A-Z]{5})-([0-9A-Z]{5})/ ? ("$1$2") : ('');
    substr($ten, 0, 1) = substr($ten, 0, 1) eq '7' ? '8' : '7';
    my $wrong = substr($ten, 0, 5) . '-' . substr($ten, 5) . '-' . check_symbol($ten);
    my $r = kmdc_run($erin, 'activate', $wrong);
    ok(($r->{rc} // -1) == 4 && $r->{err} =~ /1 of 5 attempts/ && $r->{err} =~ /check the access code/,
       'access code: a wrong but well-formed code is counted and says so (exit 4)')
        or explain_run($r);
    is(attempts($erin), '1|false|issued', 'access code: the datacenter counted one attempt');
    sql("UPDATE cards SET activation_failures = 5, locked = true "
        . "WHERE serial = x'$erin->{serial}'::bigint");
    $r = kmdc_run($erin, 'activate', $erin->{code});
    ok(($r->{rc} // -1) == 4 && $r->{err} =~ /locked/
       && $r->{err} =~ /kmdcadm revoke $erin->{serial}/
       && $r->{err} =~ /kmdcadm issue --address $erin->{addr}/,
       "access code: a locked card's message names the operator's commands") or explain_run($r);
    unlike($r->{err}, qr/run kmdc activate again/,
           'access code: a locked card does not say to run kmdc activate again');
}

# ---- 3. progress -------------------------------------------------------------------------
subtest '3. progress' => sub {
    {
        my $doc = document("$w/two.bin", 2 << 20);
        my $r = kmdc_run($alice, 'send', '--to', $bob->{addr}, $doc);
        ok(($r->{rc} // -1) == 0 && $r->{err} eq '',
           'progress: nothing on stderr when it is not a terminal') or explain_run($r);
        $r = kmdc_run($alice, '--progress', 'send', '--to', $bob->{addr}, $doc);
        ok(($r->{rc} // -1) == 0
           && $r->{err} =~ m{^two\.bin: 100% 2\.0 MiB of 2\.0 MiB, [0-9.]+ [KMGT]?i?B/s, publishing$}m,
           'progress: --progress shows bytes, rate and then publishing') or explain_run($r);
        my $in = newdir();
        $r = kmdc_run($bob, '--progress', 'fetch', '-d', $in);
        ok(($r->{rc} // -1) == 0 && $r->{err} =~ m{^delivery [0-9a-f]{16}: 100% 2\.0 MiB of 2\.0 MiB}m,
           'progress: a fetch shows each download') or explain_run($r);
        $r = kmdc_run($bob, 'fetch', '-d', $in);
        ok(($r->{rc} // -1) == 0 && $r->{err} eq '', 'progress: a quiet fetch without --progress')
            or explain_run($r);
    }
};

done_testing();
