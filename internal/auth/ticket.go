package auth

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// TicketPrefix starts every stream ticket.
const TicketPrefix = "tlt_"

// ticketBytes is how many random bytes a ticket has.
const ticketBytes = 24

// ticketLen is the length of a ticket: the prefix and 24 bytes in
// unpadded base64url.
const ticketLen = len(TicketPrefix) + (ticketBytes*8+5)/6

// ErrTooManyTickets is returned by Issue when the in-memory tickets are at
// their limit (TicketOptions.MaxTickets), none of them expired.
var ErrTooManyTickets = errors.New("too many outstanding stream tickets")

// TicketOptions configure Tickets; zero fields take their defaults.
type TicketOptions struct {
	// Redis, when not nil, keeps the tickets, so that one issued by a
	// replica is redeemable on any other; otherwise they are kept in
	// memory.
	Redis redis.UniversalClient
	// KeyPrefix starts the Redis keys ("twinline:ticket:").
	KeyPrefix string
	// TTL is how long a ticket stays redeemable (30s).
	TTL time.Duration
	// MaxTickets bounds the tickets kept in memory (10000).
	MaxTickets int
	// Now is the clock (time.Now).
	Now func() time.Time
}

// Tickets issues single-use, short-lived stream tickets: a browser, which
// cannot set headers on a WebSocket or EventSource, asks for one with its
// session and opens the stream with ?ticket=. A ticket carries the
// identity it was issued to; only its hash is stored.
type Tickets struct {
	backend ticketBackend
	ttl     time.Duration
	now     func() time.Time
}

// ticketBackend keeps tickets: by the hash of the ticket, the encoded
// identity, for ttl.
type ticketBackend interface {
	// put stores val under key for ttl; key is new.
	put(ctx context.Context, key string, val []byte, ttl time.Duration, now time.Time) error
	// take returns and removes the value of key; ErrInvalidToken if there
	// is none.
	take(ctx context.Context, key string, now time.Time) ([]byte, error)
}

// NewTickets returns Tickets kept in opts.Redis, or in memory without it.
func NewTickets(opts TicketOptions) *Tickets {
	t := &Tickets{ttl: cmp.Or(opts.TTL, 30*time.Second), now: opts.Now}
	if t.now == nil {
		t.now = time.Now
	}
	if opts.Redis != nil {
		t.backend = &redisTickets{rdb: opts.Redis, prefix: cmp.Or(opts.KeyPrefix, "twinline:ticket:")}
	} else {
		t.backend = &memTickets{max: cmp.Or(opts.MaxTickets, 10000), every: t.ttl, m: map[string]memTicket{}}
	}
	return t
}

// ticketValue is what a ticket's key holds.
type ticketValue struct {
	Name    string    `json:"name"`
	Kind    Kind      `json:"kind"`
	Scopes  Scope     `json:"scopes"`
	Sites   []string  `json:"sites,omitempty"`
	Machine string    `json:"machine,omitempty"`
	TokenID string    `json:"tokenId,omitempty"`
	Expires time.Time `json:"expires"`
}

// Issue returns a new ticket for id, redeemable once until expires.
func (t *Tickets) Issue(ctx context.Context, id Identity) (ticket string, expires time.Time, err error) {
	var b [ticketBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", time.Time{}, fmt.Errorf("issuing a stream ticket: reading random bytes: %w", err)
	}
	ticket = formatTicket(b)
	now := t.now()
	expires = now.Add(t.ttl)
	val, err := json.Marshal(ticketValue{
		Name: id.Name, Kind: id.Kind, Scopes: id.Scopes, Sites: id.Sites,
		Machine: id.Machine, TokenID: id.TokenID, Expires: expires,
	})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("issuing a stream ticket: %w", err)
	}
	if err := t.backend.put(ctx, ticketKey(ticket), val, t.ttl, now); err != nil {
		return "", time.Time{}, fmt.Errorf("issuing a stream ticket: %w", err)
	}
	return ticket, expires, nil
}

// Redeem returns the identity ticket was issued to and makes the ticket
// unusable: ErrInvalidToken for a malformed, unknown or already redeemed
// ticket, ErrExpired for one past its expiry.
func (t *Tickets) Redeem(ctx context.Context, ticket string) (Identity, error) {
	if _, err := parseTicket(ticket); err != nil {
		return Identity{}, fmt.Errorf("redeeming a stream ticket: %w", err)
	}
	now := t.now()
	val, err := t.backend.take(ctx, ticketKey(ticket), now)
	if err != nil {
		return Identity{}, fmt.Errorf("redeeming a stream ticket: %w", err)
	}
	var v ticketValue
	if err := json.Unmarshal(val, &v); err != nil {
		return Identity{}, fmt.Errorf("redeeming a stream ticket: decoding: %w", err)
	}
	if !now.Before(v.Expires) {
		return Identity{}, fmt.Errorf("redeeming a stream ticket: %w", ErrExpired)
	}
	return Identity{Name: v.Name, Kind: v.Kind, Scopes: v.Scopes, Sites: v.Sites, Machine: v.Machine, TokenID: v.TokenID}, nil
}

func formatTicket(b [ticketBytes]byte) string {
	return TicketPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// parseTicket returns the random bytes of a well-formed ticket; the
// error wraps ErrInvalidToken otherwise.
func parseTicket(s string) ([ticketBytes]byte, error) {
	var b [ticketBytes]byte
	if len(s) != ticketLen || s[:len(TicketPrefix)] != TicketPrefix {
		return b, fmt.Errorf("ticket is not %s and %d characters: %w", TicketPrefix, ticketLen-len(TicketPrefix), ErrInvalidToken)
	}
	n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(s[len(TicketPrefix):]))
	if err != nil || n != ticketBytes {
		return b, fmt.Errorf("ticket is not base64url: %w", ErrInvalidToken)
	}
	return b, nil
}

// ticketKey is what a ticket is stored under: a stolen copy of the store
// holds no redeemable ticket.
func ticketKey(ticket string) string {
	sum := sha256.Sum256([]byte(ticket))
	return hex.EncodeToString(sum[:])
}

// memTickets keeps tickets in a map, swept of expired ones every ttl or
// when full.
type memTickets struct {
	max   int
	every time.Duration

	mu    sync.Mutex
	m     map[string]memTicket
	swept time.Time
}

type memTicket struct {
	val     []byte
	expires time.Time
}

func (s *memTickets) put(_ context.Context, key string, val []byte, ttl time.Duration, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= s.max || !now.Before(s.swept.Add(s.every)) {
		for k, t := range s.m {
			if !now.Before(t.expires) {
				delete(s.m, k)
			}
		}
		s.swept = now
	}
	if len(s.m) >= s.max {
		return ErrTooManyTickets
	}
	s.m[key] = memTicket{val: val, expires: now.Add(ttl)}
	return nil
}

func (s *memTickets) take(_ context.Context, key string, _ time.Time) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.m[key]
	if !ok {
		return nil, ErrInvalidToken
	}
	delete(s.m, key)
	return t.val, nil
}

// redisTickets keeps tickets in Redis: SET PX NX, and GETDEL to redeem
// once.
type redisTickets struct {
	rdb    redis.UniversalClient
	prefix string
}

func (s *redisTickets) put(ctx context.Context, key string, val []byte, ttl time.Duration, _ time.Time) error {
	ok, err := s.rdb.SetNX(ctx, s.prefix+key, val, ttl).Result()
	if err != nil {
		return fmt.Errorf("storing in redis: %w", err)
	}
	if !ok {
		return errors.New("storing in redis: ticket exists")
	}
	return nil
}

func (s *redisTickets) take(ctx context.Context, key string, _ time.Time) ([]byte, error) {
	val, err := s.rdb.GetDel(ctx, s.prefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, ErrInvalidToken
	}
	if err != nil {
		return nil, fmt.Errorf("taking from redis: %w", err)
	}
	return val, nil
}
