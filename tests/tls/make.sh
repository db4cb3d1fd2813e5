#!/usr/bin/env bash
# Regenerates the test CA, server and client certificates (EC P-256, 100 years).
set -euo pipefail
cd "$(dirname "$0")"
days=36500
ec() { openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$1"; }
# A CA that signs the server's certificate, and one that signs clients'.
for ca in ca client-ca; do
    ec "$ca.key"
    openssl req -x509 -new -key "$ca.key" -days "$days" -subj "/CN=jobq test $ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$ca.pem"
done
# The server: localhost and 127.0.0.1.
ec server.key
openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" -out server.pem \
    -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n')
# A client certificate signed by the client CA.
ec client.key
openssl req -new -key client.key -subj "/CN=jobq test client" -out client.csr
openssl x509 -req -in client.csr -CA client-ca.pem -CAkey client-ca.key -CAcreateserial -days "$days" -out client.pem \
    -extfile <(printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n')
rm -f ./*.csr ./*.srl ca.key client-ca.key
