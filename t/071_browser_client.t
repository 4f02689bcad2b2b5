# t/071_browser_client.t - the browser client in the page (a card, sealing
# and receiving in the page), in Debian's headless Chromium driven by
# t/browser_client.py:
#   - the page's JavaScript against RFC 7914's scrypt and PBKDF2 vectors,
#     docs/vectors/*.json and the card files of fuzz/corpus/card;
#   - a card issued by kmdcadm imported and activated in the page; the same
#     file imported twice is refused;
#   - browser to kmdc (a small document, then 100 MiB with a reload in the
#     middle of the upload that resumes from the outbox without sealing
#     again), status of sent messages;
#   - kmdc to browser (long-poll sees it come, opened in seq order, saved as
#     downloads, acknowledged only after the user confirmed the files);
#   - export: kmdc takes the card over and goes on with its counters, the page
#     refuses the card and an older copy of it;
#   - no CSP violation, no request but the protocol's, and the card's keys
#     nowhere in the browser profile in the clear nor in any request.
# KMDC_SKIP_BROWSER=1 skips it on purpose; without the browser packages it
# fails with a hint (as t/070_browser.t).  Times go to the TAP comments.
use strict;
use warnings FATAL => 'all';

use Apache::Test qw(-withtestmore);
use File::Compare qw(compare);
use File::Path qw(make_path);
use File::Find ();
use JSON::PP ();
use Time::HiRes qw(time);

use lib "$ENV{KMDC_SRCDIR}/t/lib";
use KmdcClient qw(:all);

my $src = $ENV{KMDC_SRCDIR} // '.';
my $python = $ENV{KMDC_PYTHON} // '/usr/bin/python3';
my $json = JSON::PP->new;
my $page = base_url() . '/';
my $base = url_path();
my $dir = workdir();
my $profile = "$dir/profile";
my $dl = "$dir/downloads";
make_path($profile, $dl);

if ($ENV{KMDC_SKIP_BROWSER}) {      # on purpose: one skipped test, not a skipped file
    plan tests => 1;
    SKIP: { skip 'KMDC_SKIP_BROWSER=1', 1 }
    exit 0;
}
my $have = run({}, $python, '-c', 'import selenium');
unless (($have->{rc} // 1) == 0 && -x '/usr/bin/chromium' && -x '/usr/bin/chromedriver') {
    plan tests => 1;
    fail('chromium, chromedriver and python3-selenium are installed');
    diag('install the Debian packages chromium chromium-driver python3-selenium '
         . '(or set KMDC_SKIP_BROWSER=1)');
    exit 0;
}

# Run the driver; its decoded JSON ({} when it failed, with a diag).
sub browser {
    my @args = @_;
    my $r = run({}, 'timeout', '600', $python, "$src/t/browser_client.py",
                '--profile', $profile, '--downloads', $dl,
                '--driver-log', "$src/t/logs/chromedriver-071.log", @args);
    my $j = eval { $json->decode($r->{out}) };
    diag("browser_client.py: exit $r->{rc}: $r->{err}") if ($r->{rc} // 1) != 0 || !$j;
    return $j // {};
}
my @requests;
# Run named steps ([name => {step}], ...) in one browser session; the
# results by name ({} for a step that did not run).
my %R;
sub steps {
    my @pairs = @_;
    my (@names, @s);
    while (my ($n, $st) = splice(@pairs, 0, 2)) { push @names, $n; push @s, $st; }
    my $j = browser('run', $page, $json->encode(\@s));
    push @requests, @{ $j->{requests} // [] };
    for my $i (0 .. $#names) {
        $R{$names[$i]} = $j->{steps}[$i] // {};
        diag("step $names[$i]: $R{$names[$i]}{error}") if $R{$names[$i]}{error};
    }
    return $j;
}
sub step_ok {
    my ($name, $what) = @_;
    my $s = $R{$name} // {};
    ok(%$s && !$s->{error} && ($s->{kind} // 'ok') eq 'ok', $what) or diag(explain($s));
    return $s;
}
sub slurp_raw {
    my ($p) = @_;
    open my $fh, '<:raw', $p or return '';
    local $/;
    return <$fh> // '';
}
# The keys of a plain card file (docs/PROTOCOL.md 9): (uck, up_next, dck, down_next, ak).
sub card_keys {
    my ($file) = @_;
    my $b = slurp_raw($file);
    return () unless substr($b, 0, 8) eq 'KMDCCARD' && ord(substr($b, 9, 1)) == 0;
    my $body = substr($b, 48, length($b) - 80);
    my $p = 10;
    $p += 2 + unpack('n', substr($body, $p, 2));     # address
    $p += 2 + unpack('n', substr($body, $p, 2));     # url
    my @k = (substr($body, $p, 32), unpack('Q>', substr($body, $p + 32, 8)),
             substr($body, $p + 40, 32), unpack('Q>', substr($body, $p + 72, 8)),
             substr($body, $p + 80, 32));
    return @k;
}

# ---- the fixture ---------------------------------------------------------------------
my $bob = card('bob-cli');
my $alice = card('alice-br', inactive => 1);
my @issued = card_keys($alice->{file});
my $doc1 = document("$dir/hello.txt", 200_000, 'small');
my $big = document("$dir/big.bin", 100 << 20, 'big');
my $d2 = document(path('.bin'), 70_000, 'two');
my $d3 = document(path('.bin'), 0, 'three');
my ($fd, $bd) = (newdir(), newdir());
my @bobc = (kmdc_bin(), '--card', $bob->{file}, '-q');

# One browser session, as a user would go through it.
my $t0 = time;
my $j = steps(
    vectors     => { do => 'vectors', vectors => "$src/docs/vectors", cards => "$src/fuzz/corpus/card" },
    import      => { do => 'import', file => $alice->{file} },
    activate    => { do => 'activate', code => $alice->{code} },
    import2     => { do => 'import', file => $alice->{file} },
    send        => { do => 'send', files => [$doc1], to => 'Bob-CLI' },
    fetch1      => { do => 'cmd', argv => [@bobc, 'fetch', '-d', $fd] },
    reload      => { do => 'send_reload', file => $big, to => 'bob-cli', at => 0.2 },
    resume      => { do => 'send', files => [$big], to => 'bob-cli' },
    status      => { do => 'status', message => '' },
    bobsend     => { do => 'cmd', argv => [@bobc, 'send', '--to', 'alice-br', '--name',
                                           'report two.bin', $d2] },
    reload2     => { do => 'reload' },
    watch       => { do => 'watch', count => 2,
                     then => [@bobc, 'send', '--to', 'alice-br', '--name', '.hidden', $d3] },
    receive     => { do => 'receive' },
    downloads   => { do => 'downloads', names => ['report two.bin', '_.hidden'] },
    unconfirmed => { do => 'state' },
    confirm     => { do => 'confirm' },
    confirmed   => { do => 'state' },
    export      => { do => 'export' },
    exported    => { do => 'downloads', names => ["alice-br-$alice->{serial}.card"] },
    after       => { do => 'state' },
    stale       => { do => 'import', file => $alice->{file} },
);
note(sprintf('the browser session took %.1f s', time - $t0));
is_deeply($j->{csp_errors}, [], 'csp: no Content Security Policy violation in the whole session')
    or diag(explain($j->{csp_errors}));

# ---- 1. the JavaScript against the vectors -------------------------------------
my $results = $R{vectors}{results} // [];
cmp_ok(scalar @$results, '>=', 40, 'vectors: the page ran the vector checks');
ok($_->[1], "vectors: $_->[0]") or diag($_->[2]) for @$results;
note(sprintf('vectors: %.1f s in the browser', $R{vectors}{seconds} // 0));

# ---- 2. import and activate ---------------------------------------------------------
my $s = step_ok('import', 'import: the card file is taken in');
like($s->{text} // '', qr/now lives in this browser.*Do not use the file with kmdc/s,
     'import: ... and the page says the file must not be used elsewhere');
is($s->{state}{card}{State}, 'issued', 'import: the card shows as issued');
is($s->{state}{card}{Serial}, $alice->{serial}, 'import: ... with its serial');
is_deeply($s->{state}{storage}, [0, 0, ''], 'import: no localStorage, sessionStorage or cookie');
$s = step_ok('activate', 'activate: the access code activates the card in the page');
is($s->{state}{card}{State}, 'active', 'activate: the card shows as active');
is(sql("SELECT status FROM cards WHERE serial = x'$alice->{serial}'::bigint"), 'active',
   'activate: the datacenter has it active');
is($R{import2}{code}, 'exists', 'import: the same card again is refused (in use in this browser)')
    or diag(explain($R{import2}));

# ---- 3. browser to kmdc ---------------------------------------------------------------------
$s = step_ok('send', 'send: a document sealed in the page is sent');
my ($msg1) = ($s->{text} // '') =~ /message ([0-9a-f]{16}), 1 deliveries/;
ok($msg1, 'send: the page shows the message id and one delivery') or diag($s->{text});
is_deeply($s->{state}{outbox}, [], 'send: the outbox is empty again');
is($s->{state}{card}{'Next up counter'}, '1', 'send: the card used up counter 0');
is($R{fetch1}{rc}, 0, 'browser to kmdc: kmdc fetches') or diag($R{fetch1}{out});
ok(-e "$fd/hello.txt" && compare("$fd/hello.txt", $doc1) == 0,
   'browser to kmdc: kmdc wrote hello.txt byte for byte') or diag(explain([files_in($fd)]));

# ---- 4. 100 MiB with a reload in the middle of the upload ------------------------------
$s = $R{reload};
ok($s->{reloaded}, 'reload: the page was reloaded in the middle of the upload')
    or diag(explain($s));
note(sprintf('100 MiB: sealed, and 20%% uploaded, after %.1f s', $s->{seconds} // 0));
is(scalar @{ $s->{state}{outbox} // [] }, 1, 'reload: after the reload the outbox holds the envelope');
is(($s->{state}{outbox}[0] // [])->[1], 'ready', 'reload: ... sealed and waiting for an answer');
is($s->{state}{card}{'Next up counter'}, '2', 'reload: the card passed its counter before the upload');
$s = step_ok('resume', 'reload: the same document again is sent');
like($s->{text} // '', qr/resumed from the outbox/, 'reload: ... from the outbox, not sealed again');
note(sprintf('100 MiB: the upload after the reload took %.1f s', $s->{seconds} // 0));
is($s->{state}{card}{'Next up counter'}, '2', 'reload: the card spent one counter for it');
is(db_card({ serial => $alice->{serial} })->{up_next}, 2, 'reload: the datacenter too');
is(scalar @{ $s->{state}{sent} // [] }, 2, 'sent: the page lists two sent messages');

$t0 = time;
my $r = run({}, @bobc, 'fetch', '-d', $bd);
is($r->{rc}, 0, 'browser to kmdc: kmdc fetches the 100 MiB document') or diag($r->{err});
ok(compare("$bd/big.bin", $big) == 0, 'browser to kmdc: 100 MiB byte for byte');
note(sprintf('100 MiB: kmdc fetch took %.1f s', time - $t0));
unlink $big, "$bd/big.bin";

# ---- 5. status of sent messages --------------------------------------------------------------
$s = step_ok('status', 'status: the first sent message shows its state');
like($s->{text} // '', qr/^bob-cli: delivered$/m, 'status: ... delivered to bob');

# ---- 6. kmdc to the browser ------------------------------------------------------------------
is($R{bobsend}{rc}, 0, 'kmdc to browser: bob sends one document') or diag($R{bobsend}{out});
$s = $R{watch};
is($s->{before}, '1', 'watch: the page lists the first delivery') or diag(explain($s));
is($s->{then_rc}, 0, 'kmdc to browser: bob sends a second one while the page watches');
is($s->{state}{mailbox}, '2', 'watch: the long-poll shows the second one as it comes');
note(sprintf('watch: the page listed it %.1f s after kmdc send returned', $s->{seconds} // 0));
$s = step_ok('receive', 'receive: the page opens both deliveries');
like($s->{text} // '', qr/report two\.bin.*_\.hidden/s,
     'receive: ... in seq order; a name with a leading dot gets _ in front');
step_ok('downloads', 'receive: both are saved as downloads');
ok(compare("$dl/report two.bin", $d2) == 0, 'receive: the first byte for byte');
ok(-e "$dl/_.hidden" && -z "$dl/_.hidden", 'receive: the empty document as _.hidden');
is($R{unconfirmed}{mailbox}, '2', 'receive: nothing acknowledged before the user confirmed');
$s = step_ok('confirm', 'confirm: the user confirms the files were saved');
like($s->{text} // '', qr/2 deliveries acknowledged/, 'confirm: both acknowledged');
is($R{confirmed}{mailbox}, '0', 'confirm: the mailbox is empty');
is(sql("SELECT count(*) FROM deliveries WHERE recipient = x'$alice->{serial}'::bigint "
       . "AND state = 'delivered'"), 2, 'confirm: ... and the datacenter has both delivered');
is($R{confirmed}{card}{'Next down counter'}, '2', 'confirm: the card passed down counters 0 and 1');

# ---- 7. export: kmdc takes over ---------------------------------------------------------------
$s = step_ok('export', 'export: the card is exported');
like($s->{text} // '', qr/kmdc owns the card now/, 'export: ... and handed over');
my $exported = "$dl/alice-br-$alice->{serial}.card";
ok(-s $exported, 'export: the card file was downloaded');
ok(!$R{after}{send_visible}, 'export: the page offers no sending with it any more');
like($R{after}{gone} // '', qr/$alice->{serial}.*used by kmdc now/, 'export: ... and says so');
is($R{stale}{code}, 'stale', 'export: the original, older file is refused on import')
    or diag(explain($R{stale}));
my @now = card_keys($exported);
is($now[1], 2, 'export: the file has up_next 2');
is($now[3], 2, 'export: ... and down_next 2');
my $home = newdir();
system('cp', $exported, "$home/alice.card") == 0 or die;
chmod 0600, "$home/alice.card";
my $acard = { file => "$home/alice.card", serial => $alice->{serial} };
my $d4 = document(path('.bin'), 5000, 'four');
$r = run({}, kmdc_bin(), '--card', $acard->{file}, '-q', 'send', '--to', 'bob-cli', $d4);
is($r->{rc}, 0, 'export: kmdc sends with the exported card') or diag($r->{err});
is(db_card($acard)->{up_next}, 3, 'export: ... on counter 2');
$r = run({}, @bobc, 'send', '--to', 'alice-br', $d4);
$r = run({}, kmdc_bin(), '--card', $acard->{file}, '-q', 'fetch', '-d', my $ad = newdir());
is($r->{rc}, 0, 'export: kmdc receives with the exported card') or diag($r->{err});
ok((grep { compare("$ad/$_", $d4) == 0 } files_in($ad)) == 1, 'export: ... byte for byte');

# ---- 8. the card never left the browser's storage but by export --------------------------------
my @keys = grep { length == 32 } (@issued[0, 2, 4], @now[0, 2, 4]);
is(scalar @keys, 6, 'storage: the issued and the exported keys are known');
my @leaks;
File::Find::find({ no_chdir => 1, wanted => sub {
    return unless -f $_;
    my $b = slurp_raw($_);
    for my $k (@keys) {
        push @leaks, $File::Find::name if index($b, $k) >= 0 || index($b, unpack('H*', $k)) >= 0;
    }
} }, $profile);
is_deeply(\@leaks, [], 'storage: no card key in the clear anywhere in the browser profile');
my $id = qr/[0-9a-f]{16}/;
my @odd = grep {
    my ($m, $u) = @$_;
    my $ok = 0;
    if ($u =~ m{^\Q${\base_url()}\E(/.*)?$}) {
        my $p = $1 // '';
        $ok = ($m eq 'GET' && $p =~ m{^(?:/|/card/$id|/mailbox/$id(?:\?wait=\d+)?|/mailbox/$id/$id|/messages/$id)$})
            || ($m eq 'POST' && $p =~ m{^(?:/send|/activate/$id)$})
            || ($m eq 'DELETE' && $p =~ m{^/mailbox/$id/$id$});
    }
    # the browser's own favicon probe is not the page's request
    $ok = 1 if $m eq 'GET' && $u =~ m{^https?://[^/]+/favicon\.ico$};
    !$ok;
} @requests;
cmp_ok(scalar @requests, '>', 10, 'requests: the browser\'s requests were recorded');
is_deeply(\@odd, [], 'requests: only the protocol\'s requests, to the page\'s own datacenter');
my @bodies = grep { defined $_->[2] } @requests;
my @leaky = grep { my $b = $_->[2]; grep { index($b, unpack('H*', $_)) >= 0 || index($b, $_) >= 0 } @keys } @bodies;
is_deeply(\@leaky, [], 'requests: no card key in any request body');
ok((grep { $_->[0] eq 'POST' && $_->[1] =~ m{/activate/} && $_->[2] =~ /^code=[0-9A-Z-]+&r=[0-9a-f]{64}$/ } @bodies) == 1,
   'requests: activation sent the code and r only');
done_testing();
