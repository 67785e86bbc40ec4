package api

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// textProblem says what is wrong with a text field, or "" when nothing is:
// it must be valid UTF-8, hold no control character (NUL, BEL, ESC, U+0001,
// DEL, C1 codes...: PostgreSQL refuses NUL in text, and the others end up
// in logs, emails and SMS), not be blank when required, and hold at most
// max characters.
func textProblem(name, v string, max int, required bool) string {
	switch {
	case !utf8.ValidString(v):
		return name + " is not valid UTF-8"
	case required && isBlank(v):
		return name + " is required"
	case utf8.RuneCountInString(v) > max:
		return fmt.Sprintf("%s is longer than %d characters", name, max)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return fmt.Sprintf("%s holds a control character (U+%04X)", name, r)
		}
	}
	return ""
}

func isBlank(v string) bool {
	for _, r := range v {
		if !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// keyProblem checks an Idempotency-Key: 1 to maxKeyLen visible ASCII
// characters (no spaces, no control characters, nothing that is not
// ASCII), so that it means the same to every client and proxy.
func keyProblem(key string) string {
	if len(key) > maxKeyLen {
		return fmt.Sprintf("Idempotency-Key is longer than %d characters", maxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return fmt.Sprintf("Idempotency-Key may hold visible ASCII characters only (byte %d is 0x%02x)", i, key[i])
		}
	}
	return ""
}
