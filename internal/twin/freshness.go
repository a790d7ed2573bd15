package twin

import (
	"github.com/prometheus/client_golang/prometheus"
)

// LastSeenBySite returns, for each site of infos with a machine seen since
// start-up, the newest server time (Unix ms) at which one of its machines
// sent data that is now durable. Machines without a site count under "".
// It is the data freshness of a site: how old the newest data the
// dashboards can show is.
func (l *Live) LastSeenBySite(infos []Info) map[string]int64 {
	out := map[string]int64{}
	l.mu.RLock()
	defer l.mu.RUnlock()
	for _, in := range infos {
		e := l.machines[in.ID]
		if e == nil || e.lastSeen == 0 {
			continue
		}
		out[in.Site] = max(out[in.Site], e.lastSeen)
	}
	return out
}

// siteFreshness exports LastSeenBySite at each scrape: one series per
// site, so its cardinality is the number of sites, not of machines.
type siteFreshness struct {
	live     *Live
	registry *Registry
	desc     *prometheus.Desc
}

// NewSiteFreshness returns the collector of
// twinline_site_last_seen_timestamp_seconds{site}, computed from the live
// state and the registry when scraped.
func NewSiteFreshness(live *Live, registry *Registry) prometheus.Collector {
	return &siteFreshness{live: live, registry: registry, desc: prometheus.NewDesc(
		"twinline_site_last_seen_timestamp_seconds",
		"Newest server time (Unix seconds) at which a machine of the site sent data that is now durable, since this replica started; machines without a site under site=\"\".",
		[]string{"site"}, nil)}
}

func (c *siteFreshness) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *siteFreshness) Collect(ch chan<- prometheus.Metric) {
	for site, ms := range c.live.LastSeenBySite(c.registry.List()) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(ms)/1000, site)
	}
}
