package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ursamesh/ursa/pkg/api"
)

// maxDetails bounds how much of a body that is not a JSON error ends up in
// Error.Details.
const maxDetails = 512

// Error is a response other than 2xx from the API. Its fields come from the
// JSON error body {"title","details","causes":[{"field","message"}]}; when
// the body is not one, Title is the HTTP status text and Details the start of
// the body.
type Error struct {
	Status  int              // HTTP status code
	Title   string           // short summary ("Invalid resource")
	Details string           // what went wrong, in a sentence
	Causes  []api.FieldError // one entry per field the server refused
	// RetryAfter is the server's Retry-After, when it sent one in seconds
	// (as it does with 503 when its store is down), and zero otherwise.
	RetryAfter time.Duration
}

// Error returns the title and details on the first line, then every cause as
// "field: message" on its own line, so that a user sees each field path.
func (e *Error) Error() string {
	var b strings.Builder
	title := e.Title
	if title == "" {
		title = http.StatusText(e.Status)
	}
	if title == "" {
		title = fmt.Sprintf("HTTP status %d", e.Status)
	}
	b.WriteString(title)
	if e.Details != "" && e.Details != e.Title {
		b.WriteString(": ")
		b.WriteString(e.Details)
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	for _, c := range e.Causes {
		b.WriteString("\n")
		b.WriteString(c.String())
	}
	return b.String()
}

// IsNotFound reports whether err is, or wraps, an *Error with status 404.
func IsNotFound(err error) bool { return hasStatus(err, http.StatusNotFound) }

// IsConflict reports whether err is, or wraps, an *Error with status 409: a
// PUT whose version no longer matches the stored one.
func IsConflict(err error) bool { return hasStatus(err, http.StatusConflict) }

func hasStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// newError builds the *Error of a response whose body has been read into
// data.
func newError(resp *http.Response, data []byte) *Error {
	e := &Error{Status: resp.StatusCode}
	if s := resp.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(strings.TrimSpace(s)); err == nil && secs > 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	var body struct {
		Title   string           `json:"title"`
		Details string           `json:"details"`
		Causes  []api.FieldError `json:"causes"`
	}
	if err := json.Unmarshal(data, &body); err == nil && (body.Title != "" || body.Details != "" || len(body.Causes) > 0) {
		e.Title, e.Details, e.Causes = body.Title, body.Details, body.Causes
		return e
	}
	e.Title = http.StatusText(resp.StatusCode)
	e.Details = snippet(data)
	return e
}

// snippet returns the start of a body that is not a JSON error, on one line.
func snippet(data []byte) string {
	s := strings.Join(strings.Fields(string(data)), " ")
	if len(s) <= maxDetails {
		return s
	}
	s = s[:maxDetails]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
