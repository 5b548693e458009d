package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

var (
	jwtParser    = jwt.NewParser()
	jwtValidator = jwt.NewValidator()
)

// verbatim logic of v0.1.37 internal/validation/request.go (token part)
func validateToken(tok string) string {
	if tok == "" {
		return "Service account token cannot be empty"
	}
	parsedToken, _, err := jwtParser.ParseUnverified(tok, &jwt.RegisteredClaims{})
	if err != nil {
		return fmt.Sprintf("Service account token cannot be parsed: %v", err)
	}
	err = jwtValidator.Validate(parsedToken.Claims)
	if err != nil {
		return fmt.Sprintf("Service account token failed basic claim validations: %v", err)
	}
	return "OK"
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for sc.Scan() {
		tok := sc.Text()
		out := validateToken(tok)
		out = strings.ReplaceAll(out, "\\", "\\\\")
		out = strings.ReplaceAll(out, "\n", "\\n")
		fmt.Fprintln(w, out)
	}
}
