#!/usr/bin/env python3
"""Config errors: every bad config fails at start with FILE:LINE and a fix."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib as harness  # noqa: E402
from lib import test  # noqa: E402

GOOD_SCANNER = '''scanners = ( { name = "c"; argv = [ "/bin/true", "{file}" ];
  clean_codes = [ 0 ]; infected_codes = [ 1 ]; } );
connectors = ( { name = "smtp"; domains = [ "*" ]; } );
'''


def check(text, line, *needles, prog="splitter"):
    d = harness.tmpdir("conf")
    path = os.path.join(d, "spoold.conf")
    with open(path, "w") as f:
        f.write(text)
    r = harness.run([harness.bin_path(prog), "-c", path, "--once"], timeout=30)
    assert r.returncode == 78, "exit %d, want 78: %s" % (r.returncode, r.out)
    want = "%s:%d:" % (path, line)
    assert want in r.out, "want %r in %r" % (want, r.out)
    for n in needles:
        assert n in r.out, "want %r in %r" % (n, r.out)


@test
def unknown_top_level_key():
    check('spool_dir = "s";\nspool_dri = "x";\n' + GOOD_SCANNER, 2, "unknown key 'spool_dri'", "known keys")


@test
def syntax_error_names_line():
    check('spool_dir = "s";\nrescan_interval = 5;\nsplitter = { instances = = 1; };\n' + GOOD_SCANNER, 3, "syntax error")


@test
def overlapping_exit_codes():
    check('spool_dir = "s";\nscanners = ( { name = "c"; argv = [ "/bin/true", "{file}" ];\n'
          '  clean_codes = [ 0, 1 ];\n  infected_codes = [ 1 ]; } );\n'
          'connectors = ( { name = "smtp"; } );\n', 4, "both clean and infected")


@test
def missing_scanner_binary():
    check('spool_dir = "s";\nscanners = (\n { name = "c";\n argv = [ "/no/such/scanner", "{file}" ];\n'
          '  clean_codes = [ 0 ]; infected_codes = [ 1 ]; } );\n'
          'connectors = ( { name = "smtp"; } );\n', 4, "/no/such/scanner", "No such file")


@test
def per_attachment_needs_file_placeholder():
    check('spool_dir = "s";\nscanners = ( { name = "c";\n argv = [ "/bin/true" ];\n'
          '  clean_codes = [ 0 ]; infected_codes = [ 1 ]; } );\n'
          'connectors = ( { name = "smtp"; } );\n', 3, "{file}")


@test
def bad_connector_name_and_default():
    check('spool_dir = "s";\n' + GOOD_SCANNER.replace('name = "smtp"', 'name = "../x"'), 4,
          "connector name")
    check('spool_dir = "s";\nrouter = {\n default_connector = "nope"; };\n' + GOOD_SCANNER, 3,
          "default_connector 'nope'")


@test
def no_scanners_is_refused():
    check('spool_dir = "s";\nconnectors = ( { name = "smtp"; } );\n', 1, "scanners")


@test
def bad_regex():
    check('spool_dir = "s";\nscanners = ( { name = "c"; argv = [ "/bin/true", "{file}" ];\n'
          '  clean_codes = [ 0 ]; infected_codes = [ 1 ];\n  virus_regex = "(unclosed"; } );\n'
          'connectors = ( { name = "smtp"; } );\n', 4, "virus_regex")


@test
def every_program_checks_config():
    for prog in ("splitter", "scanner-runner", "router", "spoold"):
        d = harness.tmpdir("conf")
        path = os.path.join(d, "spoold.conf")
        with open(path, "w") as f:
            f.write('spool_dir = "s";\nbogus = 1;\n' + GOOD_SCANNER)
        r = harness.run([harness.bin_path(prog), "-c", path], timeout=30)
        assert r.returncode == 78 and "%s:2:" % path in r.out, (prog, r.returncode, r.out)
    r = harness.run([harness.bin_path("spoolctl"), "-c", path, "status"], timeout=30)
    assert r.returncode == 78 and "%s:2:" % path in r.out, r.out


@test
def bundled_configs_load():
    for conf in [os.path.join(harness.ROOT, "conf", "spoold.conf")]:
        r = harness.run([harness.bin_path("splitter"), "-c", conf, "-x", "/dev/null", "-o",
                         harness.tmpdir("x")], timeout=30)
        assert "spoold.conf:" not in r.out, r.out


if __name__ == "__main__":
    harness.main()
