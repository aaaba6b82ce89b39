// natsgo: the official Go client (nats.go, Debian's golang-github-nats-io-go-nats-dev)
// against a server, one scenario per run, for tests/test_natsgo.py.  Prints
// "ok" and exits 0, or prints the failure and exits 1.  Built offline in
// GOPATH mode (GO111MODULE=off, GOPATH=/usr/share/gocode).
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

var (
	scenario = flag.String("scenario", "", "what to run")
	url      = flag.String("url", "", "server URL")
	url2     = flag.String("url2", "", "a second server (cluster)")
	user     = flag.String("user", "", "user")
	pass     = flag.String("pass", "", "password")
	token    = flag.String("token", "", "token")
	ca       = flag.String("ca", "", "CA file for tls://")
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func connect(u string, opts ...nats.Option) *nats.Conn {
	nc, err := nats.Connect(u, append([]nats.Option{nats.Timeout(5 * time.Second)}, opts...)...)
	if err != nil {
		fail("connect %s: %v", u, err)
	}
	return nc
}

func pubsub() {
	nc := connect(*url)
	defer nc.Close()
	got := make(chan *nats.Msg, 1000)
	if _, err := nc.ChanSubscribe("t.>", got); err != nil {
		fail("subscribe: %v", err)
	}
	nc.Flush()
	for i := 0; i < 200; i++ {
		subject := fmt.Sprintf("t.%c", 'a'+i%5)
		if err := nc.Publish(subject, []byte(strings.Repeat("x", i))); err != nil {
			fail("publish: %v", err)
		}
	}
	nc.Flush()
	for i := 0; i < 200; i++ {
		select {
		case m := <-got:
			if len(m.Data) != i || m.Subject != fmt.Sprintf("t.%c", 'a'+i%5) {
				fail("message %d: %s %d bytes", i, m.Subject, len(m.Data))
			}
		case <-time.After(5 * time.Second):
			fail("message %d did not come", i)
		}
	}
}

func queue() {
	nc := connect(*url)
	defer nc.Close()
	var counts [3]int32
	for k := 0; k < 3; k++ {
		k := k
		if _, err := nc.QueueSubscribe("work", "g", func(*nats.Msg) { atomic.AddInt32(&counts[k], 1) }); err != nil {
			fail("queue subscribe: %v", err)
		}
	}
	nc.Flush()
	for i := 0; i < 300; i++ {
		nc.Publish("work", []byte("job"))
	}
	nc.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if atomic.LoadInt32(&counts[0])+atomic.LoadInt32(&counts[1])+atomic.LoadInt32(&counts[2]) == 300 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // (a duplicate would show now)
	total := counts[0] + counts[1] + counts[2]
	if total != 300 || counts[0] == 0 || counts[1] == 0 || counts[2] == 0 {
		fail("queue counts %v", counts)
	}
}

func request() {
	nc := connect(*url)
	defer nc.Close()
	nc.Subscribe("svc", func(m *nats.Msg) { m.Respond([]byte(strings.ToUpper(string(m.Data)))) })
	nc.Flush()
	for i := 0; i < 20; i++ {
		m, err := nc.Request("svc", []byte(fmt.Sprintf("ping %d", i)), 2*time.Second)
		if err != nil || string(m.Data) != fmt.Sprintf("PING %d", i) {
			fail("request %d: %v", i, err)
		}
	}
	if _, err := nc.Request("nobody.home", []byte("?"), 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
		fail("no responders: got %v", err)
	}
}

func headers() {
	nc := connect(*url)
	defer nc.Close()
	sub, _ := nc.SubscribeSync("h")
	nc.Flush()
	m := nats.NewMsg("h")
	m.Header.Add("X-Trace", "abc")
	m.Header.Add("X-Multi", "1")
	m.Header.Add("X-Multi", "2")
	m.Data = []byte("body")
	if err := nc.PublishMsg(m); err != nil {
		fail("publish: %v", err)
	}
	got, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		fail("next: %v", err)
	}
	if got.Header.Get("X-Trace") != "abc" || len(got.Header.Values("X-Multi")) != 2 || string(got.Data) != "body" {
		fail("headers %v data %q", got.Header, got.Data)
	}
}

func drain() {
	nc := connect(*url)
	var n int32
	var wg sync.WaitGroup
	wg.Add(1)
	nc.SetClosedHandler(func(*nats.Conn) { wg.Done() })
	nc.Subscribe("d", func(*nats.Msg) {
		time.Sleep(time.Millisecond)
		atomic.AddInt32(&n, 1)
	})
	nc.Flush()
	pub := connect(*url)
	for i := 0; i < 500; i++ {
		pub.Publish("d", []byte("x"))
	}
	pub.Flush()
	pub.Close()
	time.Sleep(200 * time.Millisecond) // all in the subscriber's pending queue
	if err := nc.Drain(); err != nil {
		fail("drain: %v", err)
	}
	wg.Wait()
	if atomic.LoadInt32(&n) != 500 {
		fail("drained %d of 500", n)
	}
}

func auth() {
	var good, bad nats.Option
	if *token != "" {
		good, bad = nats.Token(*token), nats.Token("wrong")
	} else {
		good, bad = nats.UserInfo(*user, *pass), nats.UserInfo(*user, "wrong")
	}
	nc := connect(*url, good)
	if err := nc.Flush(); err != nil {
		fail("flush: %v", err)
	}
	nc.Close()
	_, err := nats.Connect(*url, bad, nats.Timeout(5*time.Second))
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		fail("wrong credentials: %v", err)
	}
}

func tlsScenario() {
	pem, err := os.ReadFile(*ca)
	if err != nil {
		fail("ca: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	nc := connect(*url, nats.Secure(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	defer nc.Close()
	if !nc.TLSRequired() {
		fail("not TLS")
	}
	sub, _ := nc.SubscribeSync("secure")
	nc.Flush()
	nc.Publish("secure", []byte("over tls"))
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "over tls" {
		fail("tls message: %v", err)
	}
}

// reconnect: subscribe, say "ready", wait for the test to restart the
// server on the same port, then see the subscription work again.
func reconnect() {
	reconnected := make(chan bool, 1)
	nc := connect(*url, nats.ReconnectWait(50*time.Millisecond), nats.MaxReconnects(-1),
		nats.ReconnectHandler(func(*nats.Conn) { reconnected <- true }))
	defer nc.Close()
	sub, _ := nc.SubscribeSync("after")
	nc.Flush()
	fmt.Println("ready")
	select {
	case <-reconnected:
	case <-time.After(20 * time.Second):
		fail("no reconnect")
	}
	nc.Publish("after", []byte("again"))
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "again" {
		fail("after reconnect: %v", err)
	}
}

// cluster: a subscriber on one node, a requester and a publisher on the other.
func cluster() {
	a := connect(*url)
	defer a.Close()
	b := connect(*url2)
	defer b.Close()
	a.Subscribe("across", func(m *nats.Msg) { m.Respond(append([]byte("from a: "), m.Data...)) })
	a.Flush()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := b.Request("across", []byte("hi"), 500*time.Millisecond)
		if err == nil {
			if string(m.Data) != "from a: hi" {
				fail("reply %q", m.Data)
			}
			break
		}
		if time.Now().After(deadline) {
			fail("no reply across the cluster: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(b.DiscoveredServers()) == 0 && len(b.Servers()) < 2 {
		fail("no connect_urls learned: %v", b.Servers())
	}
}

func main() {
	flag.Parse()
	scenarios := map[string]func(){
		"pubsub": pubsub, "queue": queue, "request": request, "headers": headers,
		"drain": drain, "auth": auth, "tls": tlsScenario, "reconnect": reconnect,
		"cluster": cluster,
	}
	run, ok := scenarios[*scenario]
	if !ok {
		fail("unknown scenario %q", *scenario)
	}
	run()
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(w, "ok")
	w.Flush()
}
