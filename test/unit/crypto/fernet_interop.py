#!/usr/bin/env python3
"""fernet_interop.py - the python3-cryptography side of test_fernet.c.

  fernet_interop.py check              exits 0 if cryptography.fernet imports
  fernet_interop.py enc KEY PLAIN_HEX  prints Fernet(KEY).encrypt(plaintext)
  fernet_interop.py dec KEY TOKEN      prints the hex plaintext of TOKEN
  fernet_interop.py kdf PASS_HEX SALT_HEX ITER
                                       prints hex PBKDF2-HMAC-SHA256 (32 bytes)

Exits 3 when the cryptography module is missing (the Debian package
python3-cryptography; `bash cmake/install-deps.sh test` installs it), 1 when
a token is rejected, 2 on bad usage.
"""
import hashlib
import sys

try:
    from cryptography.fernet import Fernet, InvalidToken
except ImportError as e:
    print("python cryptography module missing (%s): run "
          "`bash cmake/install-deps.sh test`" % e, file=sys.stderr)
    sys.exit(3)


def main(argv):
    if len(argv) == 2 and argv[1] == "check":
        return 0
    if len(argv) == 4 and argv[1] == "enc":
        print(Fernet(argv[2]).encrypt(bytes.fromhex(argv[3])).decode())
        return 0
    if len(argv) == 4 and argv[1] == "dec":
        try:
            print(Fernet(argv[2]).decrypt(argv[3].encode()).hex())
        except InvalidToken:
            print("InvalidToken", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 5 and argv[1] == "kdf":
        dk = hashlib.pbkdf2_hmac("sha256", bytes.fromhex(argv[2]),
                                 bytes.fromhex(argv[3]), int(argv[4]), 32)
        print(dk.hex())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
