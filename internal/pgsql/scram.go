package pgsql

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"

	"golang.org/x/text/secure/precis"
)

// ScramIterations matches PostgreSQL's default scram_iterations.
const ScramIterations = 4096

// ScramVerifier returns a SCRAM-SHA-256 secret in the form PostgreSQL stores
// in pg_authid.rolpassword. Sending it in CREATE/ALTER ROLE ... PASSWORD
// keeps the plaintext password out of SQL text, server logs and
// pg_stat_statements, while the server still accepts the plaintext at login.
func ScramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("reading random salt: %w", err)
	}
	return scramVerifierWithSalt(password, salt, ScramIterations)
}

func scramVerifierWithSalt(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, normalizePassword(password), salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("deriving SCRAM key: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	enc := base64.StdEncoding
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations,
		enc.EncodeToString(salt), enc.EncodeToString(storedKey[:]), enc.EncodeToString(serverKey)), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// normalizePassword applies SASLprep (through PRECIS OpaqueString, as pgx
// does) before the SCRAM keys are derived, so a verifier made here matches
// what clients send. Like PostgreSQL, a password that SASLprep rejects is
// used as it is. ASCII passwords are their own SASLprep form.
func normalizePassword(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return password
	}
	normalized, err := precis.OpaqueString.String(password)
	if err != nil {
		return password
	}
	return normalized
}
