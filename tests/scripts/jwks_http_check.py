# Verifies JWTs through a JWK Set fetched over HTTP, as a JWT verifier would:
# jwks_http_check.py URL [PRIVATE_PEM KID]... signs one ES256 token per private key (kid in the
# header), fetches URL, and verifies every token against the set it got (key picked by kid).
import json, sys, urllib.request
from joserfc import jwk, jwt

url = sys.argv[1]
pairs = list(zip(sys.argv[2::2], sys.argv[3::2]))
with urllib.request.urlopen(url, timeout=10) as response:
    assert response.status == 200, response.status
    assert response.headers["Content-Type"] == "application/jwk-set+json", response.headers
    body = json.loads(response.read())
key_set = jwk.KeySet.import_key_set(body)
verified = []
for private_path, kid in pairs:
    private = jwk.import_key(open(private_path, "rb").read(), "EC")
    token = jwt.encode({"alg": "ES256", "kid": kid}, {"sub": kid}, private, algorithms=["ES256"])
    claims = jwt.decode(token, key_set, algorithms=["ES256"]).claims
    assert claims["sub"] == kid, claims
    verified.append(kid)
print(json.dumps({"kids": [k["kid"] for k in body["keys"]], "verified": verified}))
