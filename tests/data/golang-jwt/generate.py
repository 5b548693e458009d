#!/usr/bin/env python3
"""Generates the token corpus of tests/golang_jwt.rs.

Tokens: hand-picked edge cases plus deterministic structured mutations
(seeded), covering every parse and claim-validation path of golang-jwt v5's
ParseUnverified into RegisteredClaims and NewValidator().Validate. Times are
far in the past or future, so the expected answers do not depend on when
they were produced or checked.

Expected answers come from `oracle.go` (upstream v0.1.37's validateToken,
built with Go 1.26.1 and github.com/golang-jwt/jwt/v5 v5.2.2):

    python3 generate.py > tokens.txt
    go run oracle.go < tokens.b64 ...

Usage (what produced cases.tsv):
    python3 generate.py | ORACLE=/path/to/oracle python3 generate.py --pair
"""
import base64
import json
import os
import random
import subprocess
import sys

PAST = 1_000_000_000        # 2001
FUTURE = 4_102_444_800      # 2100


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def tok(header, claims, sig="c2ln") -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    c = claims if isinstance(claims, bytes) else json.dumps(claims, separators=(",", ":")).encode()
    return f"{b64(h)}.{b64(c)}.{sig}".encode()


def cases(rng: random.Random):
    good_h = {"alg": "RS256", "kid": "k"}
    good_c = {"aud": ["pods.eks.amazonaws.com"], "exp": FUTURE, "nbf": PAST, "iat": PAST,
              "iss": "https://oidc.example/id/X", "sub": "system:serviceaccount:ns:sa"}
    out = []
    # Segments.
    out += [b"abc", b"abc.def", b"a.b.c.d", b"..", b"...", b".", b"a..b", b"x.y.", b"x.y.!!!"]
    # Header base64.
    g = b64(json.dumps(good_c).encode())
    for h in ["!!!", "eyJ!", "eyJhb", "ab+d", "ab/d", "e30=", "e30==", "e3 0", "ey\x7fJ",
              b64(b'{"alg":"RS256"}') + "=", "eyJhbGciOiJSUzI1NiJ9\t"]:
        out.append(f"{h}.{g}.sig".encode())
    out.append(b"Bearer " + tok(good_h, good_c))
    out.append("é".encode() + tok(good_h, good_c))
    # Header JSON.
    for raw in [b"xyz", b"", b"[]", b'"s"', b"5", b"true", b"null", b'{"alg":', b'{"alg":"RS256"}x',
                b"\xef\xbb\xbf{}", b"\xff\xfe", b'{"alg":"RS256",}', b"{'alg':'RS256'}", b'{"alg" "RS256"}',
                b'{"alg":"RS\\u0032256"}', b'{"alg":"RS256","x":[1,2,}', b'{"a":tru}', b'{"a":nul}',
                b'{"a":-}', b'{"a":1.}', b'{"a":1e}', b'{"a":01}', b'{"a":"\\x"}', b'{"a":"\\u12g4"}',
                b'{"a":"a\nb"}', b' {"alg":"RS256"} ', b'{"alg":"RS256","alg":"none"}']:
        out.append(tok(raw, good_c))
    for alg in [None, 5, None, "XX999", "rs256", "none", "HS256", "ES512", "EdDSA", "PS384", "", "RS256 "]:
        h = {"kid": "k"} if alg is None else {"alg": alg, "kid": "k"}
        out.append(tok(h, good_c))
    # Claims base64 and JSON.
    hh = b64(json.dumps(good_h).encode())
    for c in ["!!!", "eyJhb!", "", "e30=", "e3"]:
        out.append(f"{hh}.{c}.sig".encode())
    for raw in [b"hello", b"{}x", b"[]", b'"x"', b"5", b"null", b"{}", b"true"]:
        out.append(tok(good_h, raw))
    # Claim types.
    values = [PAST, FUTURE, str(PAST), str(FUTURE), "abc", "", " 1", "1e3", "1e400", 1e400 if False else "1e400x",
              True, False, None, {}, [], [1], 1.5, -1, 0, 1e20, -1e20, PAST + 0.9, FUTURE + 0.9, "-5", "1.", "1e+", "0x10"]
    for field in ["exp", "nbf", "iat", "EXP", "Exp", "nBf", "IAT"]:
        for v in values:
            c = dict(good_c)
            for k in list(c):
                if k.lower() == field.lower():
                    del c[k]
            c[field] = v
            out.append(tok(good_h, c))
    for field in ["aud", "AUD", "iss", "sub", "jti", "ISS", "Sub"]:
        for v in ["x", ["a", "b"], [], [1], ["a", None], 5, {}, True, None, [["a"]]]:
            c = dict(good_c)
            c[field] = v
            out.append(tok(good_h, c))
    # Combinations that abort at different members.
    for raw in [b'{"iss":5,"aud":5}', b'{"iss":5,"exp":"x"}', b'{"aud":5,"exp":"x"}', b'{"exp":"x","aud":5}',
                b'{"iss":5,"sub":true}', b'{"sub":{},"iss":5}', b'{"exp":1,"nbf":4102444800}',
                b'{"exp":1,"EXP":4102444800}', b'{"EXP":1,"exp":4102444800}', b'{"exp":null}',
                b'{"exp":4102444800,"nbf":null,"aud":null}', b'{"kubernetes.io":5,"exp":1}']:
        out.append(tok(good_h, raw))
    # Seeded structured mutations of a valid token's JSON segments and base64.
    base_h = json.dumps(good_h, separators=(",", ":")).encode()
    base_c = json.dumps(good_c, separators=(",", ":")).encode()
    alphabet = b'{}[]":,.-+0123456789eE tfnul\\/xA\x00\x01\x7f\x80\xc3\xa9\xff'
    for _ in range(1500):
        h, c = bytearray(base_h), bytearray(base_c)
        target = h if rng.random() < 0.4 else c
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            i = rng.randrange(len(target) + (1 if op == 0 else 0)) if target else 0
            if op == 0:
                target.insert(i, rng.choice(alphabet))
            elif op == 1 and target:
                del target[min(i, len(target) - 1)]
            elif target:
                target[min(i, len(target) - 1)] = rng.choice(alphabet)
        out.append(tok(bytes(h), bytes(c)))
    b64chars = b"ABCabc012-_+/=!. "
    for _ in range(500):
        t = bytearray(tok(good_h, good_c))
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(t))
            if rng.random() < 0.5:
                t[i] = rng.choice(b64chars)
            else:
                t.insert(i, rng.choice(b64chars))
        out.append(bytes(t))
    return out


def main():
    rng = random.Random(20261129)
    tokens = cases(rng)
    oracle = os.environ.get("ORACLE")
    lines = [base64.b64encode(t).decode() for t in tokens]
    if not oracle:
        print("\n".join(lines))
        return
    # The oracle reads raw tokens, one per line.
    raw = b"\n".join(tokens) + b"\n"
    assert all(b"\n" not in t and b"\r" not in t for t in tokens)
    answers = subprocess.run([oracle], input=raw, capture_output=True, check=True).stdout.decode().splitlines()
    assert len(answers) == len(tokens), (len(answers), len(tokens))
    for line, answer in zip(lines, answers):
        print(f"{line}\t{answer}")


if __name__ == "__main__":
    main()
