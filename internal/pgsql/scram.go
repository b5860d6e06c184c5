package pgsql

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/text/secure/precis"
	"golang.org/x/text/unicode/norm"
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
	storedKey, serverKey, err := scramKeys(password, salt, iterations)
	if err != nil {
		return "", err
	}
	enc := base64.StdEncoding
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations,
		enc.EncodeToString(salt), enc.EncodeToString(storedKey[:]), enc.EncodeToString(serverKey)), nil
}

// ErrNotScram: a stored role secret is not a SCRAM-SHA-256 verifier (md5,
// or malformed), so ScramMatches cannot check a password against it.
var ErrNotScram = errors.New("not a SCRAM-SHA-256 verifier")

// maxScramIterations bounds the work a stored verifier can ask for.
const maxScramIterations = 1 << 20

// ScramMatches reports whether password is the one a SCRAM-SHA-256 verifier
// (pg_authid.rolpassword) was made from. It derives the StoredKey as a
// client logging in does (SASLprep as pgx applies it, then PBKDF2 with the
// verifier's salt and iterations) and compares it with the stored one, which
// is the check the server makes at login.
func ScramMatches(verifier, password string) (bool, error) {
	rest, ok := strings.CutPrefix(verifier, "SCRAM-SHA-256$")
	if !ok {
		return false, ErrNotScram
	}
	iterSalt, keys, ok1 := strings.Cut(rest, "$")
	iterStr, saltB64, ok2 := strings.Cut(iterSalt, ":")
	storedB64, _, ok3 := strings.Cut(keys, ":")
	iterations, err := strconv.Atoi(iterStr)
	if !ok1 || !ok2 || !ok3 || err != nil || iterations < 1 || iterations > maxScramIterations {
		return false, ErrNotScram
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltB64)
	stored, err2 := base64.StdEncoding.DecodeString(storedB64)
	if err1 != nil || err2 != nil || len(stored) != sha256.Size {
		return false, ErrNotScram
	}
	storedKey, _, err := scramKeys(password, salt, iterations)
	if err != nil {
		return false, err
	}
	return hmac.Equal(storedKey[:], stored), nil
}

// scramKeys derives the StoredKey and ServerKey of RFC 5802 from the
// password as clients send it (normalised).
func scramKeys(password string, salt []byte, iterations int) (storedKey [sha256.Size]byte, serverKey []byte, err error) {
	salted, err := pbkdf2.Key(sha256.New, normalizePassword(password), salt, iterations, sha256.Size)
	if err != nil {
		return storedKey, nil, fmt.Errorf("deriving SCRAM key: %w", err)
	}
	return sha256.Sum256(hmacSHA256(salted, "Client Key")), hmacSHA256(salted, "Server Key"), nil
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
	if isASCII(password) {
		return password
	}
	normalized, err := precis.OpaqueString.String(password)
	if err != nil {
		return password
	}
	return normalized
}

// mappedToNothing is RFC 3454 table B.1, which SASLprep deletes.
var mappedToNothing = regexp.MustCompile(`[\x{00AD}\x{034F}\x{1806}\x{180B}-\x{180D}\x{200B}-\x{200D}\x{2060}\x{FE00}-\x{FE0F}\x{FEFF}]`)

// PasswordIsNormalized reports whether every SCRAM client hashes password as
// it is. libpq applies SASLprep (NFKC plus mappings), pgx and this package
// PRECIS OpaqueString (NFC); for a password either of them changes, a
// verifier made here would match one kind of client and not the other.
func PasswordIsNormalized(password string) bool {
	if isASCII(password) {
		return true
	}
	return normalizePassword(password) == password && norm.NFKC.String(password) == password &&
		!mappedToNothing.MatchString(password)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
