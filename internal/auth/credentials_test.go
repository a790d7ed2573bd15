package auth

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func basic(userPass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(userPass))
}

func TestCredentials(t *testing.T) {
	const tok = "tl_AbC-_09"
	tests := []struct {
		name    string
		headers []string // Authorization values
		query   string
		want    string
		wantErr error
	}{
		{name: "none", wantErr: ErrNoCredentials},
		{name: "bearer", headers: []string{"Bearer " + tok}, want: tok},
		{name: "bearer lower case", headers: []string{"bearer " + tok}, want: tok},
		{name: "bearer upper case, extra spaces", headers: []string{"BEARER   " + tok + " "}, want: tok},
		{name: "token", headers: []string{"Token " + tok}, want: tok},
		{name: "token mixed case", headers: []string{"tOkEn " + tok}, want: tok},
		{name: "basic", headers: []string{basic("grafana:" + tok)}, want: tok},
		{name: "basic empty user", headers: []string{basic(":" + tok)}, want: tok},
		{name: "basic unpadded", headers: []string{"Basic " + base64.RawStdEncoding.EncodeToString([]byte("u:"+tok))}, want: tok},
		{name: "basic lower case", headers: []string{"basic " + base64.StdEncoding.EncodeToString([]byte("u:"+tok))}, want: tok},
		{name: "basic password with colon", headers: []string{basic("u:a:b")}, want: "a:b"},
		{name: "header wins over p", headers: []string{"Bearer " + tok}, query: "u=x&p=other", want: tok},
		{name: "influx v1 p", query: "db=x&u=me&p=" + url.QueryEscape(tok), want: tok},
		{name: "influx v1 p only", query: "p=" + tok, want: tok},
		{name: "p with malformed pair elsewhere", query: "q=%zz&p=" + tok, want: tok},
		{name: "u without p", query: "u=me", wantErr: ErrNoCredentials},
		{name: "other parameter ending in p", query: "xp=1", wantErr: ErrNoCredentials},
		{name: "empty p", query: "u=me&p=", wantErr: ErrInvalidToken},
		{name: "two p", query: "p=a&p=b", wantErr: ErrInvalidToken},
		{name: "p with space", query: "p=a+b", wantErr: ErrInvalidToken},
		{name: "bearer empty", headers: []string{"Bearer"}, wantErr: ErrInvalidToken},
		{name: "bearer blank", headers: []string{"Bearer   "}, wantErr: ErrInvalidToken},
		{name: "bearer two words", headers: []string{"Bearer a b"}, wantErr: ErrInvalidToken},
		{name: "bearer control", headers: []string{"Bearer a\x01b"}, wantErr: ErrInvalidToken},
		{name: "bearer non-ascii", headers: []string{"Bearer aöb"}, wantErr: ErrInvalidToken},
		{name: "empty header", headers: []string{""}, wantErr: ErrInvalidToken},
		{name: "two headers", headers: []string{"Bearer a", "Bearer b"}, wantErr: ErrInvalidToken},
		{name: "unknown scheme", headers: []string{"Digest username=x"}, wantErr: ErrInvalidToken},
		{name: "scheme only prefix", headers: []string{"Bearerx " + tok}, wantErr: ErrInvalidToken},
		{name: "basic bad base64", headers: []string{"Basic !!!"}, wantErr: ErrInvalidToken},
		{name: "basic empty", headers: []string{"Basic "}, wantErr: ErrInvalidToken},
		{name: "basic no colon", headers: []string{basic(tok)}, wantErr: ErrInvalidToken},
		{name: "basic empty password", headers: []string{basic("user:")}, wantErr: ErrInvalidToken},
		{name: "header too long", headers: []string{"Bearer " + strings.Repeat("a", 4<<10)}, wantErr: ErrInvalidToken},
		{name: "secret too long", headers: []string{"Bearer " + strings.Repeat("a", MaxSecretLen+1)}, wantErr: ErrInvalidToken},
		{name: "longest secret", headers: []string{"Bearer " + strings.Repeat("a", MaxSecretLen)}, want: strings.Repeat("a", MaxSecretLen)},
		{name: "bad header, valid p", headers: []string{"Bearer"}, query: "p=" + tok, wantErr: ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/write?"+tt.query, nil)
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			got, err := Credentials(r)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Credentials() error = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("Credentials() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCredentialsIgnoresCookie(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.AddCookie(&http.Cookie{Name: "twinline_session", Value: "tl_x"})
	if _, err := Credentials(r); !errors.Is(err, ErrNoCredentials) {
		t.Errorf("Credentials() error = %v, want ErrNoCredentials", err)
	}
}

func TestStreamTicket(t *testing.T) {
	tests := []struct{ query, want string }{
		{"", ""},
		{"ticket=tlt_abc", "tlt_abc"},
		{"machine=m1&ticket=tlt_abc", "tlt_abc"},
		{"ticket=", ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/api/v1/stream?"+tt.query, nil)
		if got := StreamTicket(r); got != tt.want {
			t.Errorf("StreamTicket(?%s) = %q, want %q", tt.query, got, tt.want)
		}
	}
}

// FuzzCredentials checks that Credentials never panics, that whatever it
// returns is a plausible secret, and that a secret put in any of the four
// places comes back.
func FuzzCredentials(f *testing.F) {
	f.Add("Bearer tl_abc", "", "tl_abc", "user", uint8(0))
	f.Add("Basic dTp0bF9hYmM=", "u=a&p=b", "x:y", "", uint8(2))
	f.Add("token   x", "p=%zz", "p", "a:b", uint8(3))
	f.Add("", "p=", "\x00", "\xff", uint8(1))
	f.Fuzz(func(t *testing.T, header, query, secret, user string, how uint8) {
		// Arbitrary input: no panic, and a secret only if plausible.
		r := &http.Request{Header: http.Header{}, URL: &url.URL{RawQuery: query}}
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		if got, err := Credentials(r); err == nil && !validSecretChars(got) {
			t.Fatalf("Credentials(%q, ?%s) = %q, not a valid secret", header, query, got)
		} else if err != nil && !errors.Is(err, ErrNoCredentials) && !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("Credentials(%q, ?%s) error = %v, want ErrNoCredentials or ErrInvalidToken", header, query, err)
		}

		// Round trip.
		if !validSecretChars(secret) || strings.Contains(user, ":") {
			return
		}
		r = &http.Request{Header: http.Header{}, URL: &url.URL{}}
		switch how % 4 {
		case 0:
			r.Header.Set("Authorization", "Bearer "+secret)
		case 1:
			r.Header.Set("Authorization", "Token "+secret)
		case 2:
			r.Header.Set("Authorization", basic(user+":"+secret))
		case 3:
			r.URL.RawQuery = url.Values{"u": {user}, "p": {secret}}.Encode()
		}
		got, err := Credentials(r)
		if err != nil || got != secret {
			t.Fatalf("Credentials(%v, ?%s) = %q, %v; want %q", r.Header, r.URL.RawQuery, got, err, secret)
		}
	})
}
