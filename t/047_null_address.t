# t/047_null_address.t - `null` is an address like any other.
#
# The address rule ^[a-z0-9][a-z0-9._-]{0,63}$ admits `null`, which a
# PostgreSQL array literal reads as the NULL element unless it is quoted.  A
# card whose address is literally `null` receives (alone and beside another
# recipient) and sends, byte for byte, and each send spends exactly one
# counter of its sender.
use strict;
use warnings FATAL => 'all';

use FindBin ();
use lib "$FindBin::Bin/lib";

use Test::More;
use KmdcClient qw(sql document path same);
use KmdcIntake qw(:all);

for my $v (qw(KMDC_SUITE_URL KMDC_BUILD KMDC_MASTER_KEY_FILE PGHOST)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $alice = issue('nl-alice');
my $bob = issue('nl-bob');
my $null = issue('null');
is(sql("SELECT status FROM cards WHERE serial = x'$null->{serial}'::bigint AND "
       . "address = 'null'"), 'active', 'a card with the address `null` is issued and active');

# Send $doc from $from to $to; every recipient in @$got fetches it.
sub relay {
    my ($name, $from, $to, $got, $size) = @_;
    subtest $name => sub {
        my $doc = document(path('.doc'), $size, $name);
        my $env = seal($from, $to, $doc);
        my $up = up_next($from);
        my $res = post_envelope($env);
        is($res->{code}, 201, '201 Created') or diag($res->{body});
        is($res->{json} && $res->{json}{deliveries}, scalar @$got,
           scalar(@$got) . ' deliveries') or diag($res->{body});
        is(up_next($from), $up + 1, 'the sender spent one counter');
        for my $r (@$got) {
            my ($rc, $d, $files, $out) = fetch_all($r);
            ok($rc == 0 && @$files == 1 && same("$d/$files->[0]", $doc),
               "$r->{addr} fetches the document byte for byte")
                or diag("exit $rc, files: @$files; $out");
        }
        done_testing();
    };
}

relay('to `null` alone', $alice, 'null', [$null], 70000);
relay('to `nl-bob` and `null`', $alice, 'nl-bob,null', [$bob, $null], 1000);
relay('to `null` and `nl-bob` (null first)', $alice, 'null,nl-bob', [$null, $bob], 1);
relay('from `null` to `nl-alice`', $null, 'nl-alice', [$alice], 5000);
relay('from `null` to itself', $null, 'null', [$null], 10);

done_testing();
