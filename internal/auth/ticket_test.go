package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/twinline/twinline/internal/redistest"
)

// testTickets is what every ticket backend must pass; newTickets returns
// Tickets of one backend (two calls: two replicas sharing it) on clock c.
func testTickets(t *testing.T, newTickets func(c *clock) *Tickets) {
	id := Identity{Name: "operator", Kind: KindSession, Scopes: ScopeRead, Sites: []string{"a"}, Machine: "m1", TokenID: "0123456789abcdef"}

	t.Run("redeem once", func(t *testing.T) {
		c := newClock()
		tk := newTickets(c)
		ticket, expires, err := tk.Issue(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if want := c.Now().Add(30 * time.Second); !expires.Equal(want) {
			t.Errorf("Issue() expires = %s, want %s", expires, want)
		}
		if _, err := parseTicket(ticket); err != nil {
			t.Errorf("Issue() = %q: %v", ticket, err)
		}
		c.Add(29 * time.Second)
		got, err := tk.Redeem(t.Context(), ticket)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(got, id); diff != "" {
			t.Errorf("Redeem() (-got +want):\n%s", diff)
		}
		if _, err := tk.Redeem(t.Context(), ticket); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("second Redeem() error = %v, want ErrInvalidToken", err)
		}
	})
	t.Run("another replica", func(t *testing.T) {
		c := newClock()
		a, b := newTickets(c), newTickets(c)
		ticket, _, err := a.Issue(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Redeem(t.Context(), ticket); err != nil {
			t.Fatalf("Redeem() on another replica: %v", err)
		}
		if _, err := a.Redeem(t.Context(), ticket); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("Redeem() after the other replica's: error = %v, want ErrInvalidToken", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		c := newClock()
		tk := newTickets(c)
		ticket, _, err := tk.Issue(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		c.Add(30 * time.Second)
		if _, err := tk.Redeem(t.Context(), ticket); !errors.Is(err, ErrExpired) {
			t.Errorf("Redeem() error = %v, want ErrExpired", err)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		c := newClock()
		tk := newTickets(c)
		ticket, _, err := tk.Issue(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		other := ticket[:len(ticket)-2] + "AA"
		if other == ticket {
			other = ticket[:len(ticket)-2] + "BA"
		}
		for _, s := range []string{"", "tlt_", ticket + "A", ticket[:len(ticket)-1], "tl_" + ticket[3:], strings.ToUpper(ticket), other} {
			if _, err := tk.Redeem(t.Context(), s); !errors.Is(err, ErrInvalidToken) {
				t.Errorf("Redeem(%q) error = %v, want ErrInvalidToken", s, err)
			}
		}
		if _, err := tk.Redeem(t.Context(), ticket); err != nil {
			t.Errorf("Redeem() after invalid ones: %v", err)
		}
	})
}

func TestMemoryTickets(t *testing.T) {
	// Replicas share memory only in a test: the second Tickets of a
	// clock gets the first one's map.
	backends := map[*clock]ticketBackend{}
	testTickets(t, func(c *clock) *Tickets {
		tk := NewTickets(TicketOptions{Now: c.Now})
		if b, ok := backends[c]; ok {
			tk.backend = b
		}
		backends[c] = tk.backend
		return tk
	})
}

func TestMemoryTicketsBounded(t *testing.T) {
	c := newClock()
	tk := NewTickets(TicketOptions{Now: c.Now, MaxTickets: 3, TTL: 10 * time.Second})
	var first string
	for i := range 3 {
		ticket, _, err := tk.Issue(t.Context(), Anonymous)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = ticket
		}
		c.Add(time.Second)
	}
	if _, _, err := tk.Issue(t.Context(), Anonymous); !errors.Is(err, ErrTooManyTickets) {
		t.Fatalf("Issue() beyond the limit: error = %v, want ErrTooManyTickets", err)
	}
	// Redeeming one makes room.
	if _, err := tk.Redeem(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tk.Issue(t.Context(), Anonymous); err != nil {
		t.Fatalf("Issue() after a redeem: %v", err)
	}
	// Expired ones are swept.
	c.Add(10 * time.Second)
	for range 3 {
		if _, _, err := tk.Issue(t.Context(), Anonymous); err != nil {
			t.Fatalf("Issue() after expiry: %v", err)
		}
	}
	if got := len(tk.backend.(*memTickets).m); got != 3 {
		t.Errorf("%d tickets kept, want 3", got)
	}
}

func TestRedisTickets(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	testTickets(t, func(c *clock) *Tickets {
		return NewTickets(TicketOptions{Redis: rdb, KeyPrefix: prefix, Now: c.Now})
	})

	// The key expires in Redis too, and holds no ticket in clear.
	tk := NewTickets(TicketOptions{Redis: rdb, KeyPrefix: prefix + "ttl:"})
	ticket, _, err := tk.Issue(t.Context(), Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(t.Context(), prefix+"ttl:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{prefix + "ttl:" + ticketKey(ticket)}; !cmp.Equal(keys, want) {
		t.Fatalf("keys = %q, want %q", keys, want)
	}
	ttl, err := rdb.PTTL(t.Context(), keys[0]).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 0 || ttl > 30*time.Second {
		t.Errorf("PTTL = %s, want (0, 30s]", ttl)
	}
}

func TestRedisTicketsDown(t *testing.T) {
	rdb, prefix := redistest.Client(t)
	tk := NewTickets(TicketOptions{Redis: rdb, KeyPrefix: prefix})
	ticket, _, err := tk.Issue(t.Context(), Anonymous)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// A Redis error is not an invalid ticket: the API answers 503, not 401.
	if _, err := tk.Redeem(ctx, ticket); err == nil || errors.Is(err, ErrInvalidToken) {
		t.Errorf("Redeem() with Redis unreachable: error = %v, want another error than ErrInvalidToken", err)
	}
}

// FuzzTicket checks that parseTicket never panics, accepts only the one
// spelling of a ticket, and accepts every ticket formatTicket makes.
func FuzzTicket(f *testing.F) {
	f.Add("tlt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", []byte("0123456789abcdefghijklmn"))
	f.Add("tlt_", []byte{})
	f.Add("tl_x", []byte{0xff})
	f.Fuzz(func(t *testing.T, s string, raw []byte) {
		if b, err := parseTicket(s); err == nil {
			if got := formatTicket(b); got != s {
				t.Fatalf("parseTicket(%q) = %x, formatted %q", s, b, got)
			}
		} else if !errors.Is(err, ErrInvalidToken) {
			t.Fatalf("parseTicket(%q) error = %v, want ErrInvalidToken", s, err)
		}
		var b [ticketBytes]byte
		copy(b[:], raw)
		got, err := parseTicket(formatTicket(b))
		if err != nil || got != b {
			t.Fatalf("parseTicket(formatTicket(%x)) = %x, %v", b, got, err)
		}
	})
}
