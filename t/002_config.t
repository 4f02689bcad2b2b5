# t/002_config.t - start-up checks of mod_kmdc: a second httpd, started by
# this test with a generated configuration and the same module, must refuse
# to start on a bad configuration with a message that names the fix, and must
# answer 503 on /health when its database lacks the migrations.
#
# Needs the environment t/run-suite exports (KMDC_MODULE, KMDC_CONNINFO,
# KMDC_MASTER_KEY_FILE, KMDC_HTTPD, KMDC_APXS, PGHOST/PGPORT/PGUSER...).
# Each case lives in t/logs/002_config/CASE/ (httpd.conf, error_log, stderr).
use strict;
use warnings FATAL => 'all';

use Test::More;
use File::Path qw(make_path remove_tree);
use File::Spec ();
use JSON::PP ();
use LWP::UserAgent ();
use POSIX qw(WNOHANG);
use Time::HiRes qw(sleep time);
use FindBin ();
use lib "$FindBin::Bin/lib";
use KmdcUtil qw(slurp spew free_port);

for my $v (qw(KMDC_MODULE KMDC_CONNINFO KMDC_MASTER_KEY_FILE PGPORT PGUSER)) {
    BAIL_OUT("$v is not set: run the suite with t/run-suite BUILD_DIR")
        unless defined $ENV{$v} && length $ENV{$v};
}

my $httpd = $ENV{KMDC_HTTPD} || '/usr/sbin/apache2';
my $apxs = $ENV{KMDC_APXS} || 'apxs';
my $modules = qx{$apxs -q LIBEXECDIR 2>/dev/null} || '/usr/lib/apache2/modules';
chomp $modules;
my $root = File::Spec->rel2abs('t/logs/002_config');
my $is_root = $> == 0;
my %running;    # pid => 1, stopped in END

remove_tree($root);
make_path($root);

sub new_key_file {
    my ($file, $mode) = @_;
    open my $r, '<:raw', '/dev/urandom' or die "/dev/urandom: $!";
    read($r, my $bytes, 32) == 32 or die "short read from /dev/urandom";
    close $r;
    spew($file, unpack('H*', $bytes) . "\n", $mode);
    chmod $mode, $file or die "chmod $file: $!";   # umask-proof
    return $file;
}

# Write CASE/httpd.conf: a minimal server (with mod_reqtimeout as
# conf/httpd-example.conf recommends) plus $body.
sub write_conf {
    my ($dir, $port, $body) = @_;
    my $user = $is_root ? "User nobody\nGroup nogroup\n" : '';
    spew("$dir/httpd.conf", <<"EOF");
ServerRoot "$dir"
Listen 127.0.0.1:$port
ServerName localhost
LoadModule mpm_event_module "$modules/mod_mpm_event.so"
LoadModule authz_core_module "$modules/mod_authz_core.so"
LoadModule reqtimeout_module "$modules/mod_reqtimeout.so"
LoadModule kmdc_module "$ENV{KMDC_MODULE}"
RequestReadTimeout header=20-40,MinRate=500 body=20,MinRate=500
${user}PidFile "$dir/httpd.pid"
ErrorLog "$dir/error_log"
LogLevel info
DefaultRuntimeDir "$dir"
StartServers 1
ServerLimit 1
ThreadsPerChild 4
MinSpareThreads 1
MaxSpareThreads 4
MaxRequestWorkers 4
$body
EOF
}

my $ua = LWP::UserAgent->new(timeout => 5);

# Start httpd in the foreground on CASE's config.  Returns a hash: started
# (1 when it answers HTTP), pid, port, dir, exit (when it stopped), log (its
# stderr followed by its error_log).
sub start_httpd {
    my ($case, $body) = @_;
    my $dir = "$root/$case";
    make_path($dir);
    my $port = free_port();
    $body =~ s/\@PORT\@/$port/g;
    write_conf($dir, $port, $body);
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open STDOUT, '>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>', "$dir/stderr" or POSIX::_exit(126);
        exec($httpd, '-d', $dir, '-f', "$dir/httpd.conf", '-DFOREGROUND')
            or POSIX::_exit(127);
    }
    $running{$pid} = 1;
    my %h = (pid => $pid, port => $port, dir => $dir, started => 0);
    my $deadline = time + 20;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            $h{exit} = $?;     # the raw wait status: 0 only for a clean exit
            last;
        }
        my $res = $ua->get("http://127.0.0.1:$port/");
        if (($res->header('Client-Warning') // '') ne 'Internal response') {
            $h{started} = 1;
            last;
        }
        sleep 0.1;
    }
    $h{log} = slurp("$dir/stderr") . slurp("$dir/error_log");
    return \%h;
}

sub stop_httpd {
    my ($h) = @_;
    my $pid = $h->{pid};
    return unless $pid && $running{$pid};
    kill 'TERM', $pid;
    my $deadline = time + 15;
    while (time < $deadline) {
        if (waitpid($pid, WNOHANG) == $pid) {
            delete $running{$pid};
            return;
        }
        sleep 0.1;
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
    delete $running{$pid};
}

END {
    for my $pid (keys %running) {
        kill 'TERM', $pid;
        waitpid($pid, 0);
    }
}

# A configuration that must stop httpd with a message matching $re: 2 tests.
sub refused {
    my ($case, $body, $re, $name) = @_;
    my $h = start_httpd($case, $body);
    stop_httpd($h) if $h->{started};
    ok(!$h->{started} && defined $h->{exit} && $h->{exit} != 0,
       "$name: httpd refuses to start") or diag("exit: " . ($h->{exit} // 'none'));
    like($h->{log}, $re, "$name: the message says what to fix")
        or diag("log:\n$h->{log}");
    return $h;
}

my $good_key = new_key_file("$root/master-600.key", 0600);
my $location = "<Location /kmdc>\n    SetHandler kmdc\n</Location>\n";
my $good = qq{KmdcDatabase "$ENV{KMDC_CONNINFO}"\nKmdcMasterKey 1 "$good_key"\n};

# --- control: the generated configuration itself is fine ------------------
{
    my $h = start_httpd('control', $good . $location);
    ok($h->{started}, 'control: a good configuration starts')
        or diag($h->{log});
    my $res = $h->{started} ? $ua->get("http://127.0.0.1:$h->{port}/kmdc/health")
                            : undef;
    ok($res && $res->code == 200 && $res->decoded_content =~ /"schema":6\b/,
       'control: /health answers 200 with schema 6')
        or diag($res ? $res->as_string : 'not started');
    stop_httpd($h);
}

# --- the handler in a virtual host only ------------------------------------
# The main server has no KmdcDatabase: start-up only passes when the
# <Location> is attributed to the virtual host that holds it.
{
    my $h = start_httpd('vhost', <<"EOF");
<VirtualHost 127.0.0.1:\@PORT\@>
    ServerName kmdc.test
    $good
    <Location /api/v1>
        SetHandler kmdc
    </Location>
</VirtualHost>
EOF
    ok($h->{started}, 'virtual host: the handler and its database set only in a '
       . '<VirtualHost> start') or diag($h->{log});
    my $res = $h->{started}
        ? $ua->get("http://127.0.0.1:$h->{port}/api/v1/health", Host => 'kmdc.test')
        : undef;
    ok($res && $res->code == 200 && $res->decoded_content =~ /"status":"ok"/,
       'virtual host: /api/v1/health answers 200 below the two-segment location')
        or diag($res ? $res->as_string : 'not started');
    stop_httpd($h);
}

# --- master key file readable by group and others --------------------------
{
    my $key = new_key_file("$root/master-644.key", 0644);
    my $body = qq{KmdcDatabase "$ENV{KMDC_CONNINFO}"\nKmdcMasterKey 1 "$key"\n}
        . $location;
    my $msg = qr/\QKmdcMasterKey: $key is readable by group or others; chmod 600 $key\E/;
    refused('key-0644', $body, $msg, 'master key file of mode 0644');

    my $dir = "$root/key-0644";
    my $out = qx{'$httpd' -d '$dir' -f '$dir/httpd.conf' -t 2>&1};
    my $rc = $? >> 8;
    ok($rc != 0, 'master key file of mode 0644: apachectl -t fails too');
    like($out, $msg, 'master key file of mode 0644: apachectl -t names the chmod')
        or diag($out);
}

# --- KmdcSequenceWindow out of range --------------------------------------
refused('window-0', $good . "KmdcSequenceWindow 0\n" . $location,
        qr/KmdcSequenceWindow: 0 is out of range; use a number from 1 to 1024/,
        'KmdcSequenceWindow 0');
refused('window-2000', $good . "KmdcSequenceWindow 2000\n" . $location,
        qr/KmdcSequenceWindow: 2000 is out of range; use a number from 1 to 1024/,
        'KmdcSequenceWindow 2000');

# --- a database without the migrations ------------------------------------
subtest 'a database without the migrations' => sub {
    {
        my $db = 'kmdc_nomigr';
        local $ENV{PGOPTIONS} = '-c client_min_messages=warning';
        my $psql = system('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'postgres',
                          '-c', "DROP DATABASE IF EXISTS $db",
                          '-c', "CREATE DATABASE $db");
        diag("psql could not create $db") if $psql != 0;
        my $conninfo = "host=127.0.0.1 port=$ENV{PGPORT} dbname=$db user=$ENV{PGUSER}";
        my $h = start_httpd('no-migrations',
                            qq{KmdcDatabase "$conninfo"\nKmdcMasterKey 1 "$good_key"\n}
                            . $location);
        ok($h->{started}, 'no migrations: httpd starts (the database is checked '
           . 'per connection, not at start-up)') or diag($h->{log});
        my $res = $h->{started} ? $ua->get("http://127.0.0.1:$h->{port}/kmdc/health")
                                : undef;
        is($res ? $res->code : 0, 503, 'no migrations: /health answers 503');
        my $b = $res ? eval { JSON::PP->new->decode($res->decoded_content) } : undef;
        ok(ref $b eq 'HASH' && ($b->{error} // '') eq 'schema_mismatch'
           && ($res->header('Content-Type') // '') =~ m{^application/json},
           'no migrations: the 503 is JSON {"error":"schema_mismatch"}')
            or diag($res ? $res->as_string : 'no answer');
        my $log = '';
        for (1 .. 50) {
            $log = slurp("$h->{dir}/error_log");
            last if $log =~ /schema version/;
            sleep 0.1;
        }
        like($log, qr/schema version 0 found, this module needs 6: run kmdcadm migrate/,
             'no migrations: one clear log line asks for kmdcadm migrate');
        stop_httpd($h);
    }
};

# --- other start-up refusals ----------------------------------------------
refused('no-database', qq{KmdcMasterKey 1 "$good_key"\n} . $location,
        qr/KmdcDatabase is not set for the main server, which uses SetHandler kmdc/,
        'SetHandler kmdc without KmdcDatabase');
refused('locationmatch',
        $good . "<LocationMatch ^/kmdc>\n    SetHandler kmdc\n</LocationMatch>\n",
        qr/SetHandler kmdc on line \d+ of \S+ must be inside a <Location \/path> section/,
        'SetHandler kmdc in <LocationMatch>');
refused('bad-duration', $good . "KmdcEnvelopeMaxAge 24x\n" . $location,
        qr/KmdcEnvelopeMaxAge: '24x' is not a duration/,
        'KmdcEnvelopeMaxAge 24x');
refused('duplicate-key-id', $good . qq{KmdcMasterKey 1 "$good_key"\n} . $location,
        qr/KmdcMasterKey: key id 1 is given twice/,
        'KmdcMasterKey with a repeated id');
refused('document-size', $good . "KmdcMaxDocumentSize 2000G\n" . $location,
        qr/KmdcMaxDocumentSize: 2000G is out of range/,
        'KmdcMaxDocumentSize 2000G (above 2^40)');
refused('pool-min', $good . "KmdcDbPoolMin 10\n" . $location,
        qr/KmdcDbPoolMin 10 is above KmdcDbPoolMax 8/,
        'KmdcDbPoolMin above the default KmdcDbPoolMax');

# --- every directive is in the command table, merged and documented --------
subtest 'every directive is in the command table, merged and documented' => sub {
    # (what mod_auth_openidc's suite enforces; read from the source tree: the
    # command table and the merge are generated from mod_kmdc_directives.h's rows)
    {
        my $srcdir = $ENV{KMDC_SRCDIR} || '.';
        my $h = slurp("$srcdir/mod_kmdc/mod_kmdc_config.h");
        my $t = slurp("$srcdir/mod_kmdc/mod_kmdc_directives.h");
        my $doc = slurp("$srcdir/docs/DIRECTIVES.md");
        my %dir = $t =~ /^#define\s+(KMDC_DIR_\w+)\s+"(\w+)"/mg;
        my @missing_cmd = grep { (my $id = $_) =~ s/^KMDC_DIR_//; $t !~ /^\s*X\(\Q$id\E,/m }
                          sort keys %dir;
        ok(keys(%dir) >= 13 && !@missing_cmd,
           'directives: every KMDC_DIR_* name is in the command table')
            or diag("not in kmdc_cmds: @missing_cmd");
        my @undoc = grep { $doc !~ /^\| `\Q$_\E` \|/m } sort values %dir;
        ok(!@undoc, 'directives: every directive has a row in docs/DIRECTIVES.md')
            or diag("undocumented: @undoc");
        my ($fields) = $h =~ /--- directives -+ \*\/\n(.*?)\n\s*\/\* --- filled/s;
        (my $decls = $fields // '') =~ s{/\*.*?\*/}{}gs;    # drop the comments
        my @names = $decls =~ /\b(\w+);/g;
        my @unmerged = grep { $t !~ /KMDC_F\(\Q$_\E,/ } @names;
        ok(@names >= 13 && !@unmerged,
           'directives: every configuration field is merged for virtual hosts')
            or diag("fields: @names; not merged: @unmerged");
    }
};

done_testing();
