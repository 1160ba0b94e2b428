"""Stand-in for ansible-test's downloaded get-pip bootstrap script (that host is unreachable here).

ansible-test runs this file as ``__main__`` with pip-install style arguments
(``--disable-pip-version-check pip==24.2 setuptools==... --no-wheel``). It bootstraps pip with the
standard library's ensurepip, then installs what it is asked for from the configured indexes,
trusting the machine's CA bundle because ansible-test's venvs do not inherit pip's settings.
"""
import os
import subprocess
import sys

CA = os.environ.get('GPUFLEET_PIP_CERT', '/etc/ssl/certs/ca-certificates.crt')


def main():
    args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
    subprocess.check_call([sys.executable, '-m', 'ensurepip', '--upgrade', '--default-pip'])
    cert = ['--cert', CA] if os.path.exists(CA) else []
    subprocess.check_call([sys.executable, '-m', 'pip', 'install'] + cert + args)


main()
