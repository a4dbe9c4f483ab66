import base64, hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from joserfc import jwk, jwt
from joserfc.errors import JoseError

jwks_path, jwk_path, private_path, public_path = sys.argv[1:5]
jwks = json.load(open(jwks_path))
own = json.load(open(jwk_path))
public = serialization.load_pem_public_key(open(public_path, "rb").read())

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def big(number, size=None):
    size = size or (number.bit_length() + 7) // 8
    return number.to_bytes(size, "big")

# RFC 7638, recomputed here: the required members, sorted, no whitespace, SHA-256.
required = {"RSA": ["e", "kty", "n"], "EC": ["crv", "kty", "x", "y"], "OKP": ["crv", "kty", "x"]}
canonical = json.dumps({k: own[k] for k in required[own["kty"]]}, separators=(",", ":"), sort_keys=True)
assert own["kid"] == b64(hashlib.sha256(canonical.encode()).digest()), "kid is not the RFC 7638 thumbprint"
assert own["use"] == "sig", own

# The JWK holds the numbers of public.pem.
if own["kty"] == "RSA":
    numbers = public.public_numbers()
    assert (own["n"], own["e"]) == (b64(big(numbers.n)), b64(big(numbers.e))), "RSA numbers differ"
elif own["kty"] == "EC":
    numbers = public.public_numbers()
    size = (public.curve.key_size + 7) // 8
    assert (own["x"], own["y"]) == (b64(big(numbers.x, size)), b64(big(numbers.y, size))), "EC point differs"
    curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "secp256k1"}
    assert own["crv"] == curves[public.curve.name], (own["crv"], public.curve.name)
else:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert own["x"] == b64(raw), "Ed25519 key differs"

# A JWT signed with the decrypted private key verifies against jwks.json, the key picked by kid.
private = jwk.import_key(open(private_path, "rb").read(), own["kty"])
alg = own["alg"]
token = jwt.encode({"alg": alg, "kid": own["kid"]}, {"sub": "keyprov-test"}, private, algorithms=[alg])
key_set = jwk.KeySet.import_key_set(jwks)
claims = jwt.decode(token, key_set, algorithms=[alg]).claims
assert claims["sub"] == "keyprov-test", claims
# ... and does not against a set without that key.
others = {"keys": [k for k in jwks["keys"] if k["kid"] != own["kid"]]}
try:
    jwt.decode(token, jwk.KeySet.import_key_set(others), algorithms=[alg]) if others["keys"] else None
    if others["keys"]:
        raise SystemExit("a set without the key verified the token")
except (JoseError, ValueError):
    pass
print(json.dumps({"kid": own["kid"], "alg": alg, "kids": [k["kid"] for k in jwks["keys"]]}))
