// Command soak runs twinline under steady load (soak) or under faults
// (chaos) and checks that nothing acknowledged is lost.
package main

func main() {}
