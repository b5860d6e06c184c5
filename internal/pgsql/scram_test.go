package pgsql

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"regexp"
	"testing"
	"time"
)

var verifierRE = regexp.MustCompile(`^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$`)

func TestScramVerifierFormat(t *testing.T) {
	v1, err := ScramVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	m := verifierRE.FindStringSubmatch(v1)
	if m == nil {
		t.Fatalf("verifier %q does not match %s", v1, verifierRE)
	}
	if m[1] != "4096" {
		t.Errorf("iterations = %s, want 4096", m[1])
	}
	for i, wantLen := range map[int]int{2: 16, 3: 32, 4: 32} {
		b, err := base64.StdEncoding.DecodeString(m[i])
		if err != nil || len(b) != wantLen {
			t.Errorf("part %d %q: %d bytes (err %v), want %d", i, m[i], len(b), err, wantLen)
		}
	}
	v2, err := ScramVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	if v1 == v2 {
		t.Error("two verifiers of one password are equal: the salt is not random")
	}
}

// TestScramVerifierRFC7677 checks the derived keys against the exchange in
// RFC 7677 section 3 (user "user", password "pencil").
func TestScramVerifierRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := scramVerifierWithSalt("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	m := verifierRE.FindStringSubmatch(v)
	if m == nil {
		t.Fatalf("verifier %q is malformed", v)
	}
	storedKey, _ := base64.StdEncoding.DecodeString(m[3])
	serverKey, _ := base64.StdEncoding.DecodeString(m[4])

	const authMessage = "n=user,r=rOprNGfwEbeRWgbNEkqO," +
		"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096," +
		"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	mac := func(key []byte) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(authMessage))
		return h.Sum(nil)
	}
	if got := base64.StdEncoding.EncodeToString(mac(serverKey)); got != "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=" {
		t.Errorf("ServerSignature = %s, want RFC 7677's", got)
	}
	// ClientKey = ClientProof XOR ClientSignature; StoredKey = H(ClientKey).
	proof, _ := base64.StdEncoding.DecodeString("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	sig := mac(storedKey)
	clientKey := make([]byte, len(proof))
	for i := range proof {
		clientKey[i] = proof[i] ^ sig[i]
	}
	if h := sha256.Sum256(clientKey); !bytes.Equal(h[:], storedKey) {
		t.Error("StoredKey does not verify RFC 7677's ClientProof")
	}
}

// TestScramVerifierLogin stores verifiers on the test server and logs in
// with the plaintext passwords.
func TestScramVerifierLogin(t *testing.T) {
	admin := testServer(t)
	conn := testConnect(t, admin)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	for name, password := range map[string]string{
		"ascii":     `q'uo"te\back@sl:ash/ %`,
		"non-ascii": "pässwörd-日本語",
		// Decomposed ä: the client and the verifier must both normalise
		// it (to NFC) or the login fails.
		"nfd": "pa\u0308sswort",
	} {
		t.Run(name, func(t *testing.T) {
			suffix := make([]byte, 6)
			rand.Read(suffix)
			role := "pgsql_scram_" + hex.EncodeToString(suffix)
			verifier, err := ScramVerifier(password)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "CREATE ROLE "+QuoteIdent(role)+" LOGIN PASSWORD "+QuoteLiteral(verifier)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := conn.Exec(context.Background(), "DROP ROLE IF EXISTS "+QuoteIdent(role)); err != nil {
					t.Errorf("dropping role %s: %v", role, err)
				}
			})

			// The server stored the verifier as given, not a hash of it.
			var stored string
			if err := conn.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&stored); err != nil {
				t.Fatal(err)
			}
			if stored != verifier {
				t.Fatalf("stored %q, sent %q", stored, verifier)
			}

			tenant := admin
			tenant.User, tenant.Password = role, password
			tc, err := tenant.Connect(ctx)
			if err != nil {
				t.Fatalf("login with the password: %v", err)
			}
			tc.Close(ctx)

			tenant.Password = password + "x"
			if tc, err := tenant.Connect(ctx); err == nil {
				tc.Close(ctx)
				t.Fatal("login with a wrong password succeeded")
			} else if Code(err) != CodeInvalidPassword {
				t.Fatalf("wrong password: got %v, want SQLSTATE %s", err, CodeInvalidPassword)
			}
		})
	}
}

func TestScramMatches(t *testing.T) {
	for _, pw := range []string{"secret", "pw'@:/x", "I\u2168"} {
		v, err := ScramVerifier(pw)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := ScramMatches(v, pw); !ok || err != nil {
			t.Errorf("ScramMatches(verifier of %q, same) = %v, %v; want true", pw, ok, err)
		}
		if ok, err := ScramMatches(v, pw+"x"); ok || err != nil {
			t.Errorf("ScramMatches(verifier of %q, other) = %v, %v; want false, nil", pw, ok, err)
		}
	}
	// RFC 7677's verifier for "pencil" (as PostgreSQL would store it).
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := scramVerifierWithSalt("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := ScramMatches(v, "pencil"); !ok {
		t.Errorf("ScramMatches(RFC 7677 verifier, pencil) = false")
	}
	for _, bad := range []string{
		"", "md5" + hex.EncodeToString(make([]byte, 16)), "SCRAM-SHA-256$", "SCRAM-SHA-256$x:c2FsdA==$a:b",
		"SCRAM-SHA-256$0:c2FsdA==$" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + ":x",
		"SCRAM-SHA-256$99999999:c2FsdA==$" + base64.StdEncoding.EncodeToString(make([]byte, 32)) + ":x",
		"SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:x",
	} {
		if ok, err := ScramMatches(bad, "pencil"); ok || !errors.Is(err, ErrNotScram) {
			t.Errorf("ScramMatches(%q) = %v, %v; want ErrNotScram", bad, ok, err)
		}
	}
}
